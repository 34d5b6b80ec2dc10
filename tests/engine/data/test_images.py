"""Image shards from scikit-learn's digits (.npz) and from a folder of PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.data.images import digits_npz, load_image_manifest, prepare_images
from engine.data.readers import InputError


def test_digits_become_normalized_float_shards_with_labels(tmp_path):
    from sklearn.datasets import load_digits

    manifest = prepare_images(
        digits_npz(tmp_path / "digits.npz"), tmp_path / "out", shard_images=500
    )
    assert manifest.count == 1797 and manifest.shape == [8, 8] and len(manifest.shards) == 4
    assert manifest.classes == [str(d) for d in range(10)]
    loaded = load_image_manifest(tmp_path / "out")
    images, labels = loaded.load_shard(0)
    digits = load_digits()
    assert images.dtype == np.float32 and images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_allclose(images[:3], digits.images[:3] / 16, rtol=1e-6)
    assert labels[:10].tolist() == digits.target[:10].tolist()
    assert sum(s["count"] for s in loaded.shards) == 1797


def _png(path, value, size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)


def test_png_folder_labels_by_subfolder_and_skips_a_broken_file(tmp_path):
    _png(tmp_path / "src" / "cats" / "a.png", 255)
    _png(tmp_path / "src" / "cats" / "b.png", 0)
    _png(tmp_path / "src" / "dogs" / "c.png", 51)
    (tmp_path / "src" / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    manifest = prepare_images(tmp_path / "src", tmp_path / "out")
    images, labels = manifest.load_shard(0)
    assert manifest.classes == ["cats", "dogs"] and images.shape == (3, 5, 6)
    assert labels.tolist() == [0, 0, 1] and images[2, 0, 0] == pytest.approx(0.2)
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["problems"]["count"] == 1 and saved["problems"]["examples"][0][
        "location"
    ].endswith("broken.png")
    with pytest.raises(InputError, match="broken.png: not a readable PNG .*strict"):
        prepare_images(tmp_path / "src", tmp_path / "strict", strict=True)


def test_images_of_another_size_stop_with_a_reason(tmp_path):
    _png(tmp_path / "src" / "a.png", 1)
    _png(tmp_path / "src" / "b.png", 1, size=(7, 7))
    with pytest.raises(
        InputError, match=r"b.png: \(7, 7\) uint8 differs from the first image's \(5, 6\)"
    ):
        prepare_images(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_npz_without_a_known_range_is_refused(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.arange(8 * 4 * 4, dtype=np.int32).reshape(8, 4, 4))
    with pytest.raises(InputError, match="store a `max_value` entry"):
        prepare_images(tmp_path / "x.npz", tmp_path / "out")
    (tmp_path / "x.tif").write_bytes(b"II*\x00")
    with pytest.raises(InputError, match="unknown image format"):
        prepare_images(tmp_path / "x.tif", tmp_path / "out")
