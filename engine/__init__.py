"""The ML engine: a pure PyTorch library (no Django, no Celery).

Run it from the command line with ``python -m engine --help``.
"""
