"""kombu's filesystem transport with atomic message files: the embedded default's broker.

kombu writes a message by creating `<time>_<uuid>.<queue>.msg` and then writing into it; a
consumer polling the folder can move and read that file between the two and get an empty
payload, which kills the whole `celery worker` ("Unrecoverable error: JSONDecodeError").
Here the payload is written to a name no consumer picks up (`....msg.partial`) and renamed
into place, so a consumer sees a message whole or not at all.

The exchange tables (which queues an exchange routes to) have the same race: a process
that binds the first queue creates the table file and then locks and writes it, and a
publisher reading in between gets an empty table. Here a table is created and filled
under one exclusive lock, and an empty or missing table is read again for a moment
(kombu remembers bindings per process: a thread can publish while the thread that
declared the binding is still creating the file, and kombu would drop that message).
"""

from __future__ import annotations

import os
import time
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.transport.filesystem import LOCK_EX, LOCK_SH, exchange_queue_t, lock, unlock
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

_EMPTY_TABLE_RETRIES = 100  # x 10 ms: a creator holds its lock for microseconds


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"  # `_get` takes only names ending in `.<queue>.msg`
        try:
            with open(partial, "wb", buffering=0) as stream:
                stream.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)  # atomic on one filesystem
        except OSError as error:
            raise ChannelError(f"Cannot add file {final!r} to directory") from error

    def get_table(self, exchange):
        file = self._exchange_file(exchange)
        for _ in range(_EMPTY_TABLE_RETRIES):
            try:
                with file.open("rb") as stream:
                    lock(stream, LOCK_SH)
                    try:
                        content = stream.read()
                    finally:
                        unlock(stream)
            except FileNotFoundError:
                content = b""  # a binder in another thread may be about to create it
            except OSError as error:
                raise ChannelError(f"Cannot open {file}") from error
            if content:
                return [exchange_queue_t(*q) for q in loads(bytes_to_str(content))]
            time.sleep(0.01)  # created by a binder that has not written it yet
        return []

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        binding = exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            descriptor = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
            with os.fdopen(descriptor, "rb+", buffering=0) as stream:
                lock(stream, LOCK_EX)
                try:
                    content = stream.read()
                    table = (
                        [exchange_queue_t(*q) for q in loads(bytes_to_str(content))]
                        if content
                        else []
                    )
                    if binding not in table:
                        table.insert(0, binding)
                        stream.seek(0)
                        stream.truncate()
                        stream.write(str_to_bytes(dumps(table)))
                finally:
                    unlock(stream)
        except OSError as error:
            raise ChannelError(f"Cannot open {file}") from error


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    """Make `filesystem://` URLs use this transport, in whichever process reads them."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
