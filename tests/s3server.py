"""An S3-protocol server on loopback for tests: moto's server mode in a thread.

    from tests.s3server import start_s3_server
    endpoint, stop = start_s3_server()      # "127.0.0.1:PORT", no scheme (OBJECT_STORE_ENDPOINT)
    ...
    stop()

Any access key and secret are accepted. moto keeps objects in this process's memory, so
keep test objects small; benchmarks run `python -m moto.server` as a separate process.
"""

from __future__ import annotations

from collections.abc import Callable

# moto signs nothing back with these, but the SDK insists on having some.
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
REGION = "us-east-1"
# S3's smallest part size: with it, objects of a few MiB already take the multipart path.
MIN_PART_SIZE = 5 * 1024 * 1024


def start_s3_server() -> tuple[str, Callable[[], None]]:
    """Start moto on 127.0.0.1 with a free port; returns (endpoint "host:port", stop)."""
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO: thousands of lines in a failing test's output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Port 0: the OS picks a free port at bind time, so parallel test runs never collide.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"{host}:{port}", server.stop
