"""Keys are server-made: nothing a caller passes can name a path outside the store."""

from __future__ import annotations

import pytest

from workers.storage import InvalidKeyError, project_key, project_prefix, validate_key
from workers.storage.keys import validate_prefix

ESCAPING_KEYS = [
    "../escape",
    "projects/1/../../escape",
    "projects/1/..",
    "./projects/1/a",
    "/etc/passwd",
    "/projects/1/a",
    "\\\\server\\share\\x",
    "projects\\1\\..\\..\\escape",
    "projects/1\\..\\..\\escape",
    "C:\\Windows\\x",
    "projects//1/a",
    "projects/1/a/",
    "projects/1/.hidden",
    "projects/1/.a.meta.json",
    "projects/1/-rf",
    "projects/1/a\x00b",
    "projects/1/a\nb",
    "projects/1/caf\u00e9",
    "projects/1/%2e%2e",
    "",
]


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_unsafe_keys_are_refused(key):
    with pytest.raises(InvalidKeyError):
        validate_key(key)


@pytest.mark.parametrize("key", ["projects/1/a.txt", "projects/12/runs/3/step=100/ckpt-0.pt"])
def test_safe_keys_pass_unchanged(key):
    assert validate_key(key) == key


@pytest.mark.parametrize("part", ["..", ".", "", "a/b", "a\\b", "/abs", ".hidden", "x" * 201])
def test_project_key_refuses_unsafe_parts(part):
    with pytest.raises(InvalidKeyError):
        project_key(1, "uploads", part)


@pytest.mark.parametrize("project_id", [0, -1, True, "1", 1.0, None])
def test_project_key_wants_a_positive_integer_project(project_id):
    with pytest.raises(InvalidKeyError, match="positive integer"):
        project_key(project_id, "a")


def test_project_key_builds_the_project_folder():
    assert project_key(3, "datasets", "12", "shard-00001.jsonl.zst") == (
        "projects/3/datasets/12/shard-00001.jsonl.zst"
    )
    assert project_prefix(3) == "projects/3/"
    with pytest.raises(InvalidKeyError, match="at least one part"):
        project_key(3)


def test_prefixes_are_whole_folders():
    assert validate_prefix("projects/1") == "projects/1/"
    assert validate_prefix("projects/1/") == "projects/1/"
    assert validate_prefix("") == ""
    for bad in ["../", "/", "projects//", "/projects/1"]:
        with pytest.raises(InvalidKeyError):
            validate_prefix(bad)


@pytest.mark.parametrize("key", ["../escape", "/tmp/escape", "projects\\..\\..\\escape"])
def test_no_store_method_accepts_an_escaping_key(store, tmp_path, key):
    with pytest.raises(InvalidKeyError):
        store.put_bytes(key, b"data")
    for method in (store.stat, store.open_stream, store.get_bytes, store.exists, store.delete):
        with pytest.raises(InvalidKeyError):
            method(key)
    for presign in (store.presigned_get_url, store.presigned_put_url):
        with pytest.raises(InvalidKeyError):
            presign(key)
    with pytest.raises(InvalidKeyError):
        list(store.list(key))
    with pytest.raises(InvalidKeyError):
        store.delete_prefix(key)
    # Nothing landed beside the store or anywhere up the tree.
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path.parent / "escape").exists()


def test_local_store_refuses_keys_through_a_planted_symlink(local_store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    link_parent = local_store.bucket_dir / "projects" / "1"
    link_parent.mkdir(parents=True)
    (link_parent / "link").symlink_to(outside, target_is_directory=True)

    with pytest.raises(InvalidKeyError, match="symlink"):
        local_store.put_bytes("projects/1/link/new", b"data")
    with pytest.raises(InvalidKeyError, match="symlink"):
        local_store.get_bytes("projects/1/link/secret")
    with pytest.raises(InvalidKeyError, match="symlink"):
        local_store.delete_prefix("projects/1/link")

    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert [info.key for info in local_store.list("projects/1")] == []
