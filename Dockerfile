# The platform and worker image: web (gunicorn), control worker, cpu/gpu workers.
#
#   docker build -t controlplane-app .                       # torch CPU
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t controlplane-app-gpu .
#
# The code runs from /app with platform/ on PYTHONPATH (as manage.py does) rather than
# installed into site-packages: settings find templates/ and static/ beside the source.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app/platform:/app \
    DJANGO_SETTINGS_MODULE=controlplane.settings \
    CONTROLPLANE_DATA_DIR=/app/var

WORKDIR /app

# torch first, from the index that holds the wanted build: the pin in pyproject.toml is
# then already met, and pip never pulls the multi-GB CUDA wheels into the CPU image.
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==2.13.0"

# The other dependencies, read from pyproject.toml: this layer is rebuilt only when the
# dependencies change, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .

# collectstatic needs production settings; that key signs nothing and is thrown away.
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /app/var \
    && DEBUG=0 SECRET_KEY="collectstatic-only-$(python -c 'import secrets; print(secrets.token_urlsafe(48))')" \
        python manage.py collectstatic --noinput \
    && chown -R app:app /app/var

USER app
EXPOSE 8000
CMD ["gunicorn", "-c", "python:controlplane.gunicorn_conf", "controlplane.wsgi"]
