"""The embedded default's broker never hands a consumer a half-written message."""

from __future__ import annotations

import threading

from kombu import Connection

from workers.filesystem_broker import install

# kombu keeps declared bindings per process (class-level state), so each test uses a queue
# name of its own: a binding remembered from another test's folder is not written again.


def _connection(folder) -> Connection:
    install()
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return Connection(
        "filesystem://localhost/",
        transport_options={
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        },
    )


def test_a_message_being_written_is_not_taken(tmp_path):
    with _connection(tmp_path) as connection:
        queue = connection.SimpleQueue("torn")
        # What a producer killed mid-write (or still writing) leaves: never delivered.
        (tmp_path / "queue" / "1_abc.torn.msg.partial").write_bytes(b'{"body": ')
        queue.put({"n": 1})
        assert queue.get(timeout=1).payload == {"n": 1}
        assert (tmp_path / "queue" / "1_abc.torn.msg.partial").exists()
        queue.close()


def test_a_consumer_racing_producers_reads_every_message_whole(tmp_path):
    sent = 600

    def produce(offset: int) -> None:
        with _connection(tmp_path) as connection:
            queue = connection.SimpleQueue("race")
            for n in range(offset, sent, 3):
                queue.put({"n": n, "padding": "x" * 2000})
            queue.close()

    producers = [threading.Thread(target=produce, args=(offset,)) for offset in range(3)]
    for producer in producers:
        producer.start()
    received = []
    with _connection(tmp_path) as connection:
        queue = connection.SimpleQueue("race")
        while len(received) < sent:
            message = queue.get(timeout=10)  # a torn message would raise JSONDecodeError
            received.append(message.payload["n"])
            message.ack()
        queue.close()
    for producer in producers:
        producer.join()
    assert sorted(received) == list(range(sent))
