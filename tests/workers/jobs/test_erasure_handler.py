"""The erasure handler rewrites a dataset version without one subject's records, run outside
Celery on a local object store (no Django, no broker); the subject travels only in the
spec's secret field."""

from __future__ import annotations

import json

from workers.events import ListSink
from workers.jobs import HANDLERS
from workers.protocol import ArtifactRef, EventType, JobKind, JobSpec
from workers.runtime import run_attempt
from workers.serve.protocol import subject_hash

KEY = "7a" * 32
KEY_ID = "k1"
ANN = "ann@example.com"


def _lines() -> list[dict]:
    people = [ANN, "bob@example.com", "carl@example.com"]
    return [{"text": f"ticket {i} about a parcel", "customer": people[i % 3]} for i in range(9)]


def _spec(store, *, attempt: int = 1, identifiers=(ANN,)) -> JobSpec:
    data = "\n".join(json.dumps(line) for line in _lines()).encode() + b"\n"
    other = b'{"text": "nobody here", "customer": "dan@example.com"}\n'
    refs = []
    for name, body in (("log.jsonl", data), ("other.jsonl", other)):
        key = f"projects/1/datasets/1/v1/{name}"
        if not store.exists(key):
            store.put_bytes(key, body)
        info = store.stat(key)
        refs.append(ArtifactRef(key, info.sha256, info.size))
    return JobSpec.from_dict(
        JobSpec(
            job_id=5,
            kind=JobKind.ERASURE,
            project_id=1,
            attempt=attempt,
            inputs=tuple(refs),
            params={
                "request_id": 3,
                "versions": [
                    {
                        "id": 11,
                        "label": "support v1",
                        "search": "field",
                        "subject_field": "customer",
                        "files": [
                            {"name": "log.jsonl", "input": 0},
                            {"name": "other.jsonl", "input": 1},
                        ],
                    }
                ],
            },
            output_prefix=f"projects/1/jobs/5/attempt-{attempt}/",
            heartbeat_seconds=30,
            subject_secrets={
                "identifiers": list(identifiers),
                "keys": {KEY_ID: KEY},
                "hashes": [subject_hash(KEY, i) for i in identifiers],
            },
        ).to_dict()
    )


def _run(store, spec):
    sink = ListSink()
    outcome = run_attempt(spec, sink, store, HANDLERS)
    assert outcome == EventType.FINISHED, sink.events[-1].payload
    return sink.events, sink.events[-1].payload["result"]


def test_the_version_is_rewritten_without_the_subject(store):
    events, result = _run(store, _spec(store))
    (version,) = result["versions"]
    assert version["found"]["records"] == 3 and version["found"]["method"] == "field"
    assert {f["name"]: f["records"] for f in version["found"]["files"]} == {
        "log.jsonl": 3,
        "other.jsonl": 0,
    }
    files = {f["name"]: f for f in version["new_files"]}
    assert (
        files["log.jsonl"]["status"] == "rewritten"
        and files["other.jsonl"]["status"] == "unchanged"
    )
    rewritten = store.get_bytes(files["log.jsonl"]["key"]).decode()
    assert ANN not in rewritten and rewritten.count("\n") == 6
    assert files["log.jsonl"]["key"].startswith("projects/1/jobs/5/attempt-1/")
    assert version["unchanged"] == [
        {
            "name": "other.jsonl",
            "key": "projects/1/datasets/1/v1/other.jsonl",
            "sha256": files["other.jsonl"]["sha256"],
        }
    ]
    # The subject is in no event: not the result, not a log line, not an artifact.
    assert ANN not in json.dumps([event.payload for event in events]).lower()


def test_a_killed_attempt_run_again_gives_the_same_outputs(store, monkeypatch):
    from workers.runtime import JobContext

    publish = JobContext.publish
    calls = []

    def dies_on_the_second_file(self, path, name):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("worker killed")
        return publish(self, path, name)

    monkeypatch.setattr(JobContext, "publish", dies_on_the_second_file)
    sink = ListSink()
    assert run_attempt(_spec(store, attempt=1), sink, store, HANDLERS) == EventType.FAILED
    monkeypatch.setattr(JobContext, "publish", publish)
    _, first = _run(store, _spec(store, attempt=2))
    _, second = _run(store, _spec(store, attempt=3))

    def same(result):
        return [
            (f["name"], f["sha256"], f["size"]) for v in result["versions"] for f in v["new_files"]
        ]

    assert same(first) == same(second)
    assert first["versions"][0]["found"] == second["versions"][0]["found"]


def test_a_subject_found_nowhere_rewrites_nothing(store):
    events, result = _run(store, _spec(store, identifiers=("zed@example.com",)))
    (version,) = result["versions"]
    assert version["found"]["records"] == 0 and version["new_files"] == []
    assert not [e for e in events if e.type == EventType.ARTIFACT]


def test_without_the_secret_field_the_job_refuses(store):
    spec = _spec(store)
    message = spec.to_dict()
    del message["subject_secrets"]
    sink = ListSink()
    outcome = run_attempt(JobSpec.from_dict(message), sink, store, HANDLERS)
    assert outcome == EventType.FAILED
    assert "subject_secrets" in sink.events[-1].payload["error"]


def test_the_secret_field_is_not_in_the_specs_repr(store):
    spec = _spec(store)
    assert ANN not in repr(spec) and KEY not in repr(spec)
