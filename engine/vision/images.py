"""Sample grids as PNG files, written atomically (temp name, fsync, rename).

    save_grid(images, "grid.png", nrow=10, scale=4)   # images (B, 1, H, W) in [-1, 1]

A greyscale PNG needs only zlib and a CRC, so we write it ourselves rather than pull an
imaging library into the engine.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch


def make_grid(images: torch.Tensor, nrow: int, padding: int = 1, scale: int = 1) -> np.ndarray:
    """(B, 1, H, W) in [-1, 1] -> one uint8 (rows*H', cols*W') array, white padding."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected greyscale images (B, 1, H, W), got {tuple(images.shape)}")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels[:, 0].numpy()  # (B, H, W)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    count, height, width = pixels.shape
    cols = max(1, min(nrow, count))
    rows = (count + cols - 1) // cols
    grid = np.full(
        (rows * (height + padding) + padding, cols * (width + padding) + padding),
        255,
        dtype=np.uint8,
    )
    for index in range(count):
        top = padding + (index // cols) * (height + padding)
        left = padding + (index % cols) * (width + padding)
        grid[top : top + height, left : left + width] = pixels[index]
    return grid


def encode_png(grey: np.ndarray) -> bytes:
    """8-bit greyscale PNG bytes (colour type 0, no interlace)."""
    if grey.dtype != np.uint8 or grey.ndim != 2:
        raise ValueError("encode_png wants a 2-D uint8 array")
    height, width = grey.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    # Each scanline starts with filter type 0 (none).
    raw = np.concatenate([np.zeros((height, 1), np.uint8), grey], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def save_grid(
    images: torch.Tensor, path: str | os.PathLike, nrow: int = 10, scale: int = 4
) -> Path:
    """Write a grid of samples as a PNG; ``scale`` enlarges each pixel for viewing."""
    return atomic_write_bytes(path, encode_png(make_grid(images, nrow=nrow, scale=scale)))
