"""Calls started at the same moment in real threads (each with its own DB connection):
how the concurrency tests make two requests or services really overlap."""

from __future__ import annotations

import threading

from django.db import connection


def in_threads(*calls):
    """Run the calls at the same moment, each in its own thread (own DB connection);
    their results in order, an exception raised by a call standing as its result."""
    start = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index, call):
        try:
            start.wait()
            results[index] = call()
        except BaseException as error:  # noqa: BLE001 - reported to the test
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results
