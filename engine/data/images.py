"""Image data sets: a folder of PNGs or an ``.npz`` array -> normalized ``.npy`` shards.

    python -m engine data images var/digits.npz --out data/digits         # arrays
    python -m engine data images photos/ --out data/photos --mode L      # PNG folder

    from engine.data.images import prepare_images, digits_npz
    manifest = prepare_images(digits_npz("var/digits.npz"), "data/digits")

Output (``engine.image-shards/1``)::

    images-00000.npy   float32 (N, H, W) or (N, H, W, C), values in [0, 1]
    labels-00000.npy   int64 (N,), present when the input has labels
    manifest.json      written last: shape, classes, and each shard's sha256 and count

Values are scaled by the input's full range (255 for 8-bit PNGs and uint8 arrays; an
``.npz`` may say otherwise with a ``max_value`` entry: the scikit-learn digits run 0..16).
PNGs in sub-folders are labelled by folder name (``cats/1.png`` -> class "cats"). The
images are streamed: at most one shard is in memory, so any number of files fits.
A PNG that cannot be decoded is counted and named in the manifest's ``problems``
(``strict`` stops at it); images of a different size or mode than the first stop the run,
since a shard holds one shape.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.readers import InputError

FORMAT = "engine.image-shards/1"
IMAGE_SUFFIXES = (".png",)
_MAX_PROBLEM_EXAMPLES = 20


@dataclass
class ImageShardManifest:
    root: Path
    shape: list[int]  # one image: (H, W) or (H, W, C)
    classes: list[str]
    shards: list[dict]  # {"images", "labels"|None, "count", "sha256"}
    count: int = 0
    problems: list[dict] = field(default_factory=list)

    def load_shard(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        shard = self.shards[index]
        labels = shard.get("labels")
        return (
            np.load(self.root / shard["images"], mmap_mode="r"),
            np.load(self.root / labels, mmap_mode="r") if labels else None,
        )


def digits_npz(path: str | os.PathLike) -> Path:
    """Save scikit-learn's 8x8 digits (1797 real handwritten digits) as an ``.npz``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, images=digits.images.astype(np.uint8), labels=digits.target, max_value=16
    )
    return path


def _scale_for(array: np.ndarray, declared: float | None, where: str) -> float:
    if declared is not None:
        return float(declared)
    if array.dtype == np.uint8:
        return 255.0
    if array.dtype == np.uint16:
        return 65535.0
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (array.min() < 0 or array.max() > 1):
            raise InputError(
                f"{where}: float images must lie in [0, 1]; store a `max_value` entry to scale them"
            )
        return 1.0
    raise InputError(
        f"{where}: cannot tell the range of {array.dtype} images; store a `max_value` entry in the .npz"
    )


def _npz_batches(
    path: Path, batch: int
) -> tuple[Iterator[tuple[np.ndarray, np.ndarray | None]], list[str]]:
    with np.load(path) as archive:
        names = set(archive.files)
        image_key = next((k for k in ("images", "x", "X", "data") if k in names), None)
        if image_key is None:
            raise InputError(
                f"{path}: no image array; name it `images` (found {', '.join(sorted(names))})"
            )
        images = archive[image_key]
        label_key = next((k for k in ("labels", "y", "target") if k in names), None)
        labels = archive[label_key] if label_key else None
        max_value = float(archive["max_value"]) if "max_value" in names else None
    if images.ndim not in (3, 4):
        raise InputError(
            f"{path}: `{image_key}` has shape {images.shape}; expected (N, H, W) or (N, H, W, C)"
        )
    if labels is not None and len(labels) != len(images):
        raise InputError(f"{path}: {len(labels)} labels for {len(images)} images")
    scale = _scale_for(images, max_value, str(path))
    if images.size and images.max() > scale:
        raise InputError(f"{path}: values go up to {images.max()} but max_value is {scale}")
    classes = [str(c) for c in sorted(set(labels.tolist()))] if labels is not None else []

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch].astype(np.float32) / np.float32(scale)
            yield (
                chunk,
                (labels[start : start + batch].astype(np.int64) if labels is not None else None),
            )

    return batches(), classes


def _png_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{root}: no .png files in the folder")
    return files


def _png_batches(root: Path, batch: int, mode: str, strict: bool, problems: list[dict]):
    from PIL import Image, UnidentifiedImageError

    files = _png_files(root)
    folders = sorted({p.parent for p in files})
    labelled = folders != [root]
    classes = [str(f.relative_to(root)) for f in folders] if labelled else []
    class_of = {f: i for i, f in enumerate(folders)}

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        images, labels, first = [], [], None
        for path in files:
            try:
                with Image.open(path) as image:
                    image.load()
                    array = np.asarray(image.convert(mode) if mode else image)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
                if strict:
                    raise InputError(
                        f"{path}: not a readable PNG ({error}) (strict mode stops here)"
                    ) from None
                problems.append({"location": str(path), "problem": f"not a readable PNG: {error}"})
                continue
            if first is None:
                first = (array.shape, array.dtype)
            elif (array.shape, array.dtype) != first:
                raise InputError(
                    f"{path}: {array.shape} {array.dtype} differs from the first image's {first[0]} {first[1]}; "
                    "resize the images to one size or pass a mode (L, RGB) to convert them"
                )
            images.append(array)
            labels.append(class_of[path.parent])
            if len(images) == batch:
                yield (
                    _to_unit_range(images, path),
                    (np.array(labels, dtype=np.int64) if labelled else None),
                )
                images, labels = [], []
        if images:
            yield (
                _to_unit_range(images, files[-1]),
                (np.array(labels, dtype=np.int64) if labelled else None),
            )

    return batches(), classes


def _to_unit_range(images: list[np.ndarray], where: Path) -> np.ndarray:
    stacked = np.stack(images)
    return stacked.astype(np.float32) / np.float32(_scale_for(stacked, None, str(where)))


def _save_npy(path: Path, array: np.ndarray) -> str:
    """Write under a temporary name, rename when complete; returns the file's sha256."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
    digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
    os.replace(temporary, path)
    return digest


def prepare_images(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    shard_images: int = 10_000,
    mode: str = "",
    strict: bool = False,
) -> ImageShardManifest:
    """Normalize the images of ``source`` (PNG folder or ``.npz``) into ``.npy`` shards."""
    source, out_dir = Path(source), Path(out_dir)
    if shard_images < 1:
        raise ValueError("shard_images must be 1 or more")
    if (out_dir / "manifest.json").exists():
        raise InputError(
            f"{out_dir} already holds image shards (manifest.json); choose a new folder"
        )
    problems: list[dict] = []
    if source.is_dir():
        batches, classes = _png_batches(source, shard_images, mode, strict, problems)
    elif source.is_file() and source.suffix == ".npz":
        batches, classes = _npz_batches(source, shard_images)
    elif source.is_file():
        raise InputError(
            f"{source}: unknown image format; give a folder of .png files or an .npz array"
        )
    else:
        raise InputError(f"{source}: no such file or folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    shape: list[int] = []
    for images, labels in batches:
        index = len(shards)
        shape = list(images.shape[1:])
        entry = {"images": f"images-{index:05d}.npy", "labels": None, "count": len(images)}
        entry["sha256"] = _save_npy(out_dir / entry["images"], images)
        if labels is not None:
            entry["labels"] = f"labels-{index:05d}.npy"
            entry["labels_sha256"] = _save_npy(out_dir / entry["labels"], labels)
        shards.append(entry)
    count = sum(s["count"] for s in shards)
    if count == 0:
        raise InputError(f"{source}: no readable images ({len(problems)} unreadable files)")
    manifest = ImageShardManifest(
        out_dir, shape, classes, shards, count, problems[:_MAX_PROBLEM_EXAMPLES]
    )
    payload = {
        "format": FORMAT,
        "count": count,
        "shape": shape,
        "dtype": "float32",
        "value_range": [0.0, 1.0],
        "classes": classes,
        "source": str(source),
        "problems": {"count": len(problems), "examples": manifest.problems},
        "shards": shards,
    }
    temporary = out_dir / ".manifest.json.tmp"
    temporary.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(temporary, out_dir / "manifest.json")
    return manifest


def load_image_manifest(path: str | os.PathLike) -> ImageShardManifest:
    path = Path(path)
    manifest_path = path / "manifest.json" if path.is_dir() else path
    if not manifest_path.is_file():
        raise InputError(f"no manifest.json at {manifest_path}: not a finished image data set")
    payload = json.loads(manifest_path.read_text(encoding="utf-8"))
    if payload.get("format") != FORMAT:
        raise InputError(
            f"{manifest_path} has format {payload.get('format')!r}, expected {FORMAT!r}"
        )
    return ImageShardManifest(
        manifest_path.parent,
        payload["shape"],
        payload["classes"],
        payload["shards"],
        payload["count"],
        payload["problems"]["examples"],
    )
