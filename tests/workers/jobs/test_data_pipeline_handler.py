"""The data-pipeline handler builds the subject index with the key its JobSpec carries,
run outside Celery on a local object store (no Django, no broker)."""

from __future__ import annotations

import hashlib
import json

from engine.data.subject_index import SubjectIndex
from workers.events import ListSink
from workers.jobs import HANDLERS
from workers.protocol import ArtifactRef, EventType, JobKind, JobSpec
from workers.runtime import run_attempt

KEY = "5e" * 32
WORDS = "order refund parcel courier invoice delay apology voucher address label".split()


def _support_log() -> bytes:
    people = ["ann@example.com", "bob@example.com", "carl@example.com"]
    lines = []
    for i in range(12):
        text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] + str(j % (i + 2)) for j in range(60))
        lines.append(json.dumps({"text": f"ticket {i}: {text}", "customer": people[i % 3]}))
    return "\n".join(lines).encode()


def _run(store, tmp_path, spec_key: str) -> tuple[str, list]:
    data = _support_log()
    key = f"projects/1/uploads/{hashlib.sha256(data).hexdigest()[:16]}"
    stored = store.put_bytes(key, data)
    spec = JobSpec.from_dict(
        {
            **JobSpec(
                job_id=9,
                kind=JobKind.DATA_PIPELINE,
                project_id=1,
                attempt=1,
                inputs=(ArtifactRef(key, stored.sha256, stored.size),),
                params={
                    "input_names": ["log.jsonl"],
                    "pipeline": {"stages": ["normalize"]},
                    "text_field": "text",
                    "subject_field": "customer",
                    "tokenizer": {"kind": "char"},
                    "val_fraction": 0.2,
                },
                output_prefix=f"projects/1/jobs/9/{spec_key[:4] or 'none'}/",
                heartbeat_seconds=30,
                subject_key=spec_key,
            ).to_dict()
        }
    )
    sink = ListSink()
    outcome = run_attempt(spec, sink, store, HANDLERS)
    return outcome, sink.events


def _download_clean(store, events, folder):
    result = events[-1].payload["result"]
    for row in result["files"]:
        if row["name"].startswith("clean/"):
            path = folder / row["name"].removeprefix("clean/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(store.get_bytes(row["key"]))
    return folder, result


def test_the_subject_index_is_keyed_with_the_specs_key(store, tmp_path):
    outcome, events = _run(store, tmp_path, KEY)
    assert outcome == EventType.FINISHED, events[-1].payload
    folder, result = _download_clean(store, events, tmp_path / "clean")
    index = SubjectIndex.load(folder, key=bytes.fromhex(KEY))
    assert len(index.lookup("Ann@Example.com ")) == 4
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["subject_keyed"] is True
    # The key appears in no event the platform stores (the result, the report's config).
    assert KEY not in json.dumps([event.payload for event in events])
    assert "subject_key" not in result["report"]["config"]


def test_a_spec_from_before_keys_builds_the_index_as_before(store, tmp_path):
    outcome, events = _run(store, tmp_path, "")
    assert outcome == EventType.FINISHED, events[-1].payload
    folder, _ = _download_clean(store, events, tmp_path / "clean")
    assert len(SubjectIndex.load(folder).lookup("bob@example.com")) == 4


def test_an_old_dispatch_message_without_the_field_still_parses():
    message = JobSpec(
        job_id=1,
        kind=JobKind.DATA_PIPELINE,
        project_id=1,
        attempt=1,
        inputs=(),
        params={},
        output_prefix="p/",
        heartbeat_seconds=30,
    ).to_dict()
    assert "subject_key" not in message  # what a worker from before the field accepts
    assert JobSpec.from_dict(message).subject_key == ""
