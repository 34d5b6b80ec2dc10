"""A replica's model files: downloaded from the object store into a verified cache, loaded.

    folder = fetch_model_files(store, spec)     # <data dir>/serve-cache/<version_id>/
    model = load_model(spec, folder)            # TextEngine (not started) or DigitImageModel

Each file is downloaded to a temporary name, its size and sha256 checked against the
ReplicaSpec (the registry's record of it), then renamed into place; a mismatch is a
:class:`ModelLoadError` naming the file. Once every file is in place a ``.verified`` marker
lists them: a later replica of the same version (a restart, a second replica on the node)
reuses the folder when the marker names the same files and their sizes still match,
without downloading or hashing again. Renames are atomic, so two replicas fetching the
same version at once cannot read each other's half-written files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from workers.serve.protocol import ModelFileRef, ReplicaSpec, Task

MARKER = ".verified"
_CHUNK = 1 << 20
TEXT_ROLES = ("weights", "config", "tokenizer")


class ModelLoadError(Exception):
    """The replica cannot load its model; the message says which file or setting, and why."""


def cache_folder(spec: ReplicaSpec, root: Path | None = None) -> Path:
    if root is None:
        from workers.config import data_dir

        root = data_dir() / "serve-cache"
    return Path(root) / str(spec.version_id)


def _marker_content(files: list[ModelFileRef]) -> list[dict]:
    return sorted(
        ({"name": f.name, "sha256": f.sha256, "size": f.size} for f in files),
        key=lambda f: f["name"],
    )


def _check_name(ref: ModelFileRef) -> None:
    name = ref.name
    if not name or "/" in name or "\\" in name or name in (".", "..") or name == MARKER:
        raise ModelLoadError(f"model file name {name!r} is not a plain file name")


def _cached(folder: Path, files: list[ModelFileRef]) -> bool:
    marker = folder / MARKER
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if recorded != _marker_content(files):
        return False
    return all(
        (folder / f.name).is_file() and (folder / f.name).stat().st_size == f.size for f in files
    )


def fetch_model_files(store, spec: ReplicaSpec, root: Path | None = None) -> Path:
    """The folder holding the spec's files, verified (downloaded unless cached)."""
    if not spec.files:
        raise ModelLoadError(f"version {spec.version} of {spec.model} has no files to serve")
    for ref in spec.files:
        _check_name(ref)
    folder = cache_folder(spec, root)
    if _cached(folder, spec.files):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    for ref in spec.files:
        target = folder / ref.name
        if target.is_file() and target.stat().st_size == ref.size and _sha256(target) == ref.sha256:
            continue  # a previous fetch got this one before failing on another
        _download(store, ref, target)
    _atomic_write(folder / MARKER, json.dumps(_marker_content(spec.files)))
    return folder


def _download(store, ref: ModelFileRef, target: Path) -> None:
    from workers.storage import StorageError

    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:
            for chunk in store.iter_chunks(ref.object_key, chunk_size=_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if size != ref.size:
            raise ModelLoadError(
                f"model file {ref.name}: the store holds {size} bytes, the registry "
                f"recorded {ref.size}"
            )
        if digest.hexdigest() != ref.sha256:
            raise ModelLoadError(
                f"model file {ref.name}: sha256 {digest.hexdigest()} does not match the "
                f"registry's {ref.sha256} (the stored object changed)"
            )
        os.replace(partial, target)
    except StorageError as error:
        raise ModelLoadError(
            f"model file {ref.name}: cannot read {ref.object_key}: {error}"
        ) from None
    finally:
        partial.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_text(text)
    os.replace(partial, path)


def _device(spec: ReplicaSpec) -> str:
    if spec.device not in ("cpu", "cuda"):
        raise ModelLoadError(f"device must be cpu or cuda, got {spec.device!r}")
    if spec.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ModelLoadError("the spec asks for cuda but this node has no usable GPU")
    return spec.device


def load_model(spec: ReplicaSpec, folder: Path):
    """A TextEngine (not started) for a text-generation spec, a DigitImageModel for images."""
    from engine.serve import ServeError

    device = _device(spec)
    if spec.task == Task.IMAGE:
        from engine.serve.images import DigitImageModel

        checkpoints = [f for f in spec.files if f.role == "checkpoint"]
        if len(checkpoints) != 1:
            raise ModelLoadError(
                f"an image model needs exactly one file of role checkpoint, got {len(checkpoints)}"
            )
        try:
            return DigitImageModel.load(folder / checkpoints[0].name, device=device)
        except ServeError as error:
            raise ModelLoadError(str(error)) from None
    if spec.task != Task.TEXT:
        raise ModelLoadError(f"unknown task {spec.task!r}")
    roles = {f.role for f in spec.files}
    missing = [role for role in TEXT_ROLES if role not in roles]
    if missing:
        raise ModelLoadError(f"a text model needs files of roles {missing} too")
    from engine.infer.loading import LoadError, load_for_generation
    from engine.serve import TextEngine

    try:
        model, tokenizer = load_for_generation(folder)
    except (LoadError, OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the text model: {error}") from None
    model = model.to(device)
    return TextEngine(
        model,
        tokenizer,
        max_batch=spec.max_batch,
        max_queue=spec.max_queue,
        device=device,
        name=spec.deployment or spec.model,
    )
