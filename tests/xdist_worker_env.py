"""Loaded with `-p tests.xdist_worker_env` (make test-fast): under pytest-xdist, each worker
gets its own data directory and Redis database before Django reads its settings.

Both workers' test databases give out the same project and job ids, so sharing the local
object store would make them write the same keys; sharing a Redis database would let one
worker's tests read the other's messages. (pytest-django already gives each worker its
own test database.)
"""

import os
import re

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw") and _worker[2:].isdigit():
    number = int(_worker[2:])
    data_dir = os.environ.get("CONTROLPLANE_DATA_DIR")
    if data_dir:
        os.environ["CONTROLPLANE_DATA_DIR"] = os.path.join(data_dir, _worker)
        os.makedirs(os.environ["CONTROLPLANE_DATA_DIR"], exist_ok=True)
    broker = os.environ.get("CELERY_BROKER_URL", "")
    match = re.fullmatch(r"(redis://[^/]+/)(\d+)", broker)
    if match and number > 0:  # gw0 keeps the configured database; gw1 the one below it
        os.environ["CELERY_BROKER_URL"] = f"{match.group(1)}{int(match.group(2)) - number}"
