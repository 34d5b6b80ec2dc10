"""gunicorn settings shared by compose.yaml, the benchmark and anyone serving the platform.

    gunicorn -c python:controlplane.gunicorn_conf controlplane.wsgi

Values come from the environment (GUNICORN_*), so a deployment tunes them without a new image.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# Sync workers: every request is short (lists are paginated, uploads stream to the object
# store), and one process per core keeps the database connection count predictable.
workers = int(os.environ.get("GUNICORN_WORKERS", os.cpu_count() or 2))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))  # large uploads stream for a while
# Import Django once in the master and fork: workers start in milliseconds and share pages.
preload_app = True
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")

# Prometheus multiprocess mode (controlplane/metrics/middleware.py): with
# PROMETHEUS_MULTIPROC_DIR set, each worker writes its request latencies to files there and
# /metrics sums them. Files of an earlier run would be summed too: empty it at start.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def on_starting(server) -> None:
    if not _metrics_dir:
        return
    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(_metrics_dir, name))


def child_exit(server, worker) -> None:
    # A dead worker's live gauges leave; its counters and histograms stay summed (they
    # counted requests that did happen).
    if _metrics_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
