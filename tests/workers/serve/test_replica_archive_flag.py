"""`ReplicaSpec.archive`: a replica of a deployment without archiving writes no archive
object and sends no index, and answers exactly as one that archives."""

from __future__ import annotations

import pytest
from replica_helpers import ListArchiver, make_spec, post, running_replica

from workers.serve.archive import Archiver, ListIndexSink, decode_member
from workers.serve.protocol import ReplicaSpec, to_dict
from workers.serve.replica import FileArchiver, NoArchiver, make_archiver

GUARDED = {"pii": "redact", "pii_output": "redact", "toxicity": "flag"}
PROMPT = "mail ann.lee@example.com now"


def serve_one(store, *, archive: bool, replica_id: str):
    """One completion through a replica with the real Archiver on `store`; the replica is
    drained on the way out, which flushes its archive."""
    spec = make_spec(
        guardrails=GUARDED, archive=archive, replica_id=replica_id, archive_window_seconds=0.1
    )
    sink = ListIndexSink()
    archiver = Archiver(store, spec, sink, node="node-1").start()
    with running_replica(spec=spec, archiver=archiver) as server:
        status, headers, body = post(
            server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
        )
    assert status == 200, body
    prefix = f"projects/{spec.project_id}/inference/{spec.deployment_id}/"
    stored = [o.key for o in store.list(prefix) if replica_id in o.key]
    return body, headers, stored, sink.indexes


def test_only_the_archiving_replica_writes_an_object_and_an_index(local_store):
    kept, kept_headers, kept_objects, kept_indexes = serve_one(
        local_store, archive=True, replica_id="a" * 32
    )
    unkept, _headers, unkept_objects, unkept_indexes = serve_one(
        local_store, archive=False, replica_id="b" * 32
    )

    assert len(kept_objects) == 1 and len(kept_indexes) == 1
    [entry] = kept_indexes[0].records
    record = decode_member(local_store.get_range(kept_objects[0], entry.offset, entry.length))
    assert record["id"] == kept_headers["X-Request-Id"]
    assert record["request"]["prompt"] == "mail <EMAIL> now"
    assert (unkept_objects, unkept_indexes) == ([], [])
    # Not archiving changes nothing a client sees: same text, usage and guardrail report.
    for key in ("choices", "usage", "x_guardrails", "model"):
        assert unkept[key] == kept[key], key
    assert unkept["x_guardrails"]["input"]["pii"] == {"EMAIL": 1}


@pytest.mark.parametrize("archive", [True, False])
def test_a_replica_without_archiving_hands_its_archiver_nothing(archive):
    archiver = ListArchiver()
    spec = make_spec(guardrails={"pii": "refuse", "pii_output": "off"}, archive=archive)
    with running_replica(spec=spec, archiver=archiver) as server:
        ok = post(server, "/v1/completions", {"prompt": "To be", "max_tokens": 2})
        refused = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})
        health = server.health()
    # A guardrail's refusal is archived like an answer, when the replica archives at all.
    assert (ok[0], refused[0], refused[2]["error"]["code"]) == (200, 400, "guardrail_refused")
    # The drain on the way out waited for both requests, archive calls included.
    assert sorted(r["status"] for r in archiver.records) == (["ok", "refused"] if archive else [])
    assert health["requests"] == 2  # the replica still counts what it served


@pytest.mark.parametrize("kind", ["store", "file:/nonexistent/records.jsonl"])
def test_make_archiver_starts_nothing_when_the_spec_says_not_to_archive(kind):
    # No store, no broker: NoArchiver opens neither (a store archiver would need both).
    archiver = make_archiver(kind, None, make_spec(archive=False), "node-1")
    assert isinstance(archiver, NoArchiver)
    archiver.record({"id": "x"})
    archiver.close(1.0)


def test_make_archiver_still_archives_by_default(tmp_path):
    archiver = make_archiver(f"file:{tmp_path / 'r.jsonl'}", None, make_spec(), "node-1")
    assert isinstance(archiver, FileArchiver)


def test_a_spec_from_an_older_platform_archives():
    sent = to_dict(make_spec())
    sent.pop("archive")  # a platform that predates the flag does not send it

    assert ReplicaSpec.from_dict(sent).archive is True
    assert ReplicaSpec.from_dict({**sent, "archive": False}).archive is False
