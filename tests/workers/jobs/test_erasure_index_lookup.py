"""The erasure handler looks a subject up in a version's subject index before downloading
its records: a version that holds nobody is answered from the index alone."""

from __future__ import annotations

import io
import json

import pytest

from engine.data.raw_subject_index import RawIndexBuilder, open_lines
from engine.data.subject_index import subject_key_id
from workers.events import ListSink
from workers.jobs import HANDLERS
from workers.protocol import ArtifactRef, EventType, JobKind, JobSpec
from workers.runtime import JobContext, run_attempt
from workers.serve.protocol import subject_hash

KEY = "7a" * 32
ANN = "ann@example.com"
PREFIX = "projects/1/datasets/1/v1/"


@pytest.fixture
def reads(monkeypatch):
    keys: list[str] = []
    real = JobContext.download

    def counted(self, key, target, sha256=None):
        keys.append(key)
        return real(self, key, target, sha256)

    monkeypatch.setattr(JobContext, "download", counted)
    return keys


def _indexed_version(store, tmp_path) -> list[tuple[str, ArtifactRef]]:
    people = [ANN, "bob@example.com", "carl@example.com"]
    data = "".join(
        json.dumps({"text": f"ticket {i}", "customer": people[i % 3]}) + "\n" for i in range(9)
    ).encode()
    builder = RawIndexBuilder("customer", bytes.fromhex(KEY))
    with open_lines(io.BytesIO(data), "log.jsonl") as lines:
        builder.add_lines("log.jsonl", lines)
    builder.write(tmp_path / "index")
    bodies = {"log.jsonl": data}
    for name in ("subject_index.json", "subject_index.npy"):
        bodies[name] = (tmp_path / "index" / name).read_bytes()
    refs = []
    for name, body in bodies.items():
        info = store.put_bytes(PREFIX + name, body)
        refs.append((name, ArtifactRef(info.key, info.sha256, info.size)))
    return refs


def _spec(refs, who: str, mode: str | None = None) -> JobSpec:
    params = {
        "request_id": 3,
        "versions": [
            {
                "id": 11,
                "label": "support v1",
                "search": "index",
                "subject_field": "customer",
                "files": [{"name": name, "input": i} for i, (name, _) in enumerate(refs)],
            }
        ],
    }
    if mode:
        params["mode"] = mode
    return JobSpec(
        job_id=5,
        kind=JobKind.ERASURE,
        project_id=1,
        attempt=1,
        inputs=tuple(ref for _, ref in refs),
        params=params,
        output_prefix="projects/1/jobs/5/attempt-1/",
        heartbeat_seconds=30,
        subject_secrets={
            "identifiers": [who],
            # Every generation's key by fingerprint, the current one first.
            "keys": {subject_key_id(bytes.fromhex(k)): k for k in ("5c" * 32, KEY)},
            "hashes": [subject_hash(KEY, who)],
        },
    )


def _run(store, spec):
    sink = ListSink()
    assert run_attempt(spec, sink, store, HANDLERS) == EventType.FINISHED, sink.events[-1].payload
    return sink.events[-1].payload["result"]["versions"][0]


@pytest.mark.parametrize("mode", [None, "find"])
def test_a_version_that_holds_nobody_is_answered_from_its_index(store, tmp_path, reads, mode):
    refs = _indexed_version(store, tmp_path)
    outcome = _run(store, _spec(refs, "zed@example.com", mode))
    assert outcome["found"] == {
        "method": "index",
        "records": 0,
        "files": [{"name": "log.jsonl", "records": 0}],
    }
    assert PREFIX + "log.jsonl" not in reads and len(reads) == 2


def test_a_version_that_holds_the_subject_is_rewritten_with_its_index(store, tmp_path, reads):
    refs = _indexed_version(store, tmp_path)
    outcome = _run(store, _spec(refs, ANN))
    assert outcome["found"]["method"] == "index" and outcome["found"]["records"] == 3
    files = {f["name"]: f for f in outcome["new_files"]}
    assert set(files) == {"log.jsonl", "subject_index.npy", "subject_index.json"}
    manifest = json.loads(store.get_bytes(files["subject_index.json"]["key"]))
    assert manifest["files"][0]["lines"] == 6
    assert manifest["files"][0]["sha256"] == files["log.jsonl"]["sha256"]
    assert PREFIX + "log.jsonl" in reads


def test_an_access_search_exports_the_records_the_index_names(store, tmp_path):
    refs = _indexed_version(store, tmp_path)
    outcome = _run(store, _spec(refs, "ANN@example.com ", "find"))
    assert outcome["found"]["method"] == "index" and outcome["found"]["records"] == 3
    rows = [json.loads(line) for line in store.get_bytes(outcome["part"]["key"]).splitlines()]
    assert [row["line"] for row in rows] == [1, 4, 7]
    assert {row["record"]["customer"] for row in rows} == {ANN}
