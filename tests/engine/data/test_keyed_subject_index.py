"""Keyed subject indexes: HMAC hashes a guess cannot reverse, refused with the wrong key,
the same hash as the serving archive's, and indexes from before keys still readable."""

from __future__ import annotations

import hashlib
import json

import pytest

from engine.cli import main
from engine.data.config import ConfigError, config_to_dict, load_pipeline_config
from engine.data.pipeline import run_pipeline
from engine.data.subject_index import SubjectIndex, SubjectKeyError, hash_subject
from tests.engine.data.conftest import write_jsonl
from workers.serve.protocol import subject_hash

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PEOPLE = ["ann@example.com", "Bob@Example.com", "carl"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    records = [
        {"text": f"record {i} of the customer support log, about order {i * 7}", "user": who}
        for i, who in enumerate(PEOPLE * 4)
    ]
    records.append({"text": "a record without a subject"})
    write_jsonl(root / "raw" / "people.jsonl", records)
    return root


def _run(raw, output, **overrides):
    config = load_pipeline_config(
        {
            "inputs": [{"path": str(raw / "raw"), "subject_field": "user"}],
            "stages": ["normalize"],
            "output": {"shard_records": 5},
            **overrides,
        }
    )
    run_pipeline(config, output_dir=output)
    return output


@pytest.fixture(scope="module")
def keyed(raw):
    return _run(raw, raw / "keyed", subject_key=KEY.hex())


def test_keyed_index_finds_each_person_however_the_id_is_written(keyed):
    index = SubjectIndex.load(keyed, key=KEY)
    assert len(index) == 12
    ann = index.lookup("ann@example.com")
    assert len(ann) == 4 and len({shard for shard, _ in ann}) == 2  # across shards
    # Case and surrounding spaces do not make another subject.
    assert index.lookup("  ANN@example.COM ") == ann
    assert len(index.lookup("bob@example.com")) == 4
    assert index.lookup("dora@example.com") == []
    rows = {}
    for shard, row in ann:
        lines = (keyed / shard).read_text().splitlines()
        rows[(shard, row)] = json.loads(lines[row])["user"]
    assert set(rows.values()) == {"ann@example.com"}


def test_the_key_never_lands_in_the_output_and_the_manifest_names_its_fingerprint(keyed):
    manifest = json.loads((keyed / "manifest.json").read_text())
    assert manifest["subject_keyed"] is True
    assert manifest["subject_key_id"] == hashlib.sha256(KEY).hexdigest()[:8]
    for path in keyed.iterdir():
        assert KEY.hex() not in path.read_bytes().decode("latin-1"), path.name
    # A plain sha256 of the address (what a guesser computes) is not in the index.
    plain = hashlib.sha256(b"ann@example.com").digest()
    assert plain not in (keyed / "subject_index.npy").read_bytes()


def test_a_lookup_with_the_wrong_key_or_none_is_refused(keyed):
    with pytest.raises(SubjectKeyError, match="wrong subject key.*key id"):
        SubjectIndex.load(keyed, key=OTHER_KEY)
    with pytest.raises(SubjectKeyError, match="is keyed"):
        SubjectIndex.load(keyed)


def test_engine_and_serving_hash_a_subject_byte_for_byte_alike():
    for subject in ["ann@example.com", " Ann@Example.COM\n", "Straße 12", "user-42", "Ǆemal"]:
        assert hash_subject(subject, key=KEY) == subject_hash(KEY.hex(), subject)
        # A salt has no say once there is a key.
        assert hash_subject(subject, "pepper", key=KEY) == subject_hash(KEY.hex(), subject)
    assert hash_subject("user-42", key=KEY) != hash_subject("user-42", key=OTHER_KEY)


def test_an_index_from_before_keys_is_still_read_as_it_was_written(raw):
    old = _run(raw, raw / "unkeyed")
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["subject_keyed"] is False and "subject_key_id" not in manifest
    index = SubjectIndex.load(old)
    assert len(index.lookup("Bob@Example.com")) == 4
    assert index.lookup("bob@example.com") == []  # before keys, ids were hashed as written
    assert hash_subject("carl") == hashlib.sha256(b"carl").hexdigest()
    with pytest.raises(SubjectKeyError, match="built without a key"):
        SubjectIndex.load(old, key=KEY)
    salted = _run(raw, raw / "salted", subject_salt="s1")
    assert len(SubjectIndex.load(salted, salt="s1").lookup("carl")) == 4


def test_config_refuses_a_bad_key_and_never_reports_it(raw):
    base = {"inputs": [{"path": str(raw / "raw"), "subject_field": "user"}]}
    with pytest.raises(ConfigError, match="subject_key: the subject key must be hex"):
        load_pipeline_config({**base, "subject_key": "not hex at all"})
    with pytest.raises(ConfigError, match="subject_key: .* at least 16"):
        load_pipeline_config({**base, "subject_key": "abcd"})
    with pytest.raises(ConfigError, match="subject_salt: leave it out"):
        load_pipeline_config({**base, "subject_key": KEY.hex(), "subject_salt": "x"})
    config = load_pipeline_config({**base, "subject_key": KEY.hex()})
    assert "subject_key" not in config_to_dict(config)


def test_cli_finds_a_subject_with_a_key_file(keyed, tmp_path, capsys):
    key_file = tmp_path / "subject.key"
    key_file.write_text(KEY.hex() + "\n")
    assert main(["data", "find-subject", str(keyed), "carl", "--key-file", str(key_file)]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    key_file.write_text(OTHER_KEY.hex())
    assert main(["data", "find-subject", str(keyed), "carl", "--key-file", str(key_file)]) == 2
    assert "wrong subject key" in capsys.readouterr().err
    assert main(["data", "find-subject", str(keyed), "carl"]) == 2
    assert "give the key it was built with" in capsys.readouterr().err


def test_cli_run_builds_a_keyed_index_from_a_key_file(raw, tmp_path, capsys):
    key_file = tmp_path / "subject.key"
    key_file.write_text(KEY.hex())
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"inputs:\n  - {{path: {raw / 'raw'}, subject_field: user}}\nstages: [normalize]\n"
    )
    output = tmp_path / "clean"
    assert (
        main(["data", "run", str(config), "--output", str(output), "--key-file", str(key_file)])
        == 0
    )
    capsys.readouterr()
    assert len(SubjectIndex.load(output, key=KEY).lookup("ANN@example.com")) == 4
