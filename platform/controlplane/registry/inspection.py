"""Architecture and parameter count of a version's files, read without the engine or torch.

- `model.safetensors`: only the header is read (8 bytes of length, then that much JSON):
  the parameter count is the sum over tensors of the product of their shapes.
- `config.json`: a small JSON file (HF style), its scalar settings kept.
- a vision checkpoint (`.pt`, a zip holding a pickle): its pickle is read with an
  unpickler that builds nothing but placeholders (no class of the file is ever imported
  or called, so a hostile file cannot run code); tensors become their shapes. The count
  covers the networks' weights and buffers, not the optimizer's or the EMA's copies.

Each reader raises `ModelFileError` with a message naming the file when it cannot tell.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from typing import Any

from workers.storage import ObjectStore

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CHECKPOINT_BYTES = 2 * 1024**3
# What a checkpoint's state holds besides the networks: never counted as parameters.
_NOT_NETWORKS = ("opt", "ema", "sched", "scaler")


class ModelFileError(ValueError):
    """A model file that cannot be read as what its name says."""


def safetensors_summary(store: ObjectStore, key: str, name: str) -> dict[str, Any]:
    """{"parameter_count", "tensors", "dtypes"} from the header alone."""
    with store.open_stream(key) as stream:
        head = stream.read(8)
        if len(head) != 8:
            raise ModelFileError(f"{name} is shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if not 2 <= length <= MAX_SAFETENSORS_HEADER:
            raise ModelFileError(f"{name} declares a header of {length} bytes: not safetensors")
        raw = stream.read(length)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise TypeError("not an object")
        count, dtypes, tensors = 0, set(), 0
        for tensor, spec in header.items():
            if tensor == "__metadata__":
                continue
            shape = spec["shape"]
            if not all(isinstance(n, int) and n >= 0 for n in shape):
                raise TypeError(f"shape of {tensor}")
            count += math.prod(shape)
            dtypes.add(str(spec["dtype"]))
            tensors += 1
    except (ValueError, TypeError, KeyError) as error:
        raise ModelFileError(f"{name} has no readable safetensors header ({error})") from None
    return {"parameter_count": count, "tensors": tensors, "dtypes": sorted(dtypes)}


def config_summary(store: ObjectStore, key: str, name: str) -> dict[str, Any]:
    """The scalar settings of an HF-style config.json."""
    try:
        config = json.loads(store.get_bytes(key, max_size=MAX_CONFIG_BYTES))
    except ValueError as error:
        raise ModelFileError(f"{name} is not a JSON object ({error})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{name} is not a JSON object")
    return {
        k: v
        for k, v in config.items()
        if isinstance(v, str | int | float | bool) or v is None or _short_list(v)
    }


def _short_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= 16
        and all(isinstance(v, str | int | float) for v in value)
    )


class _Shape:
    """What a tensor becomes: its shape."""

    def __init__(self, shape: Any) -> None:
        self.shape = tuple(shape) if isinstance(shape, tuple | list) else ()

    @property
    def numel(self) -> int:
        return math.prod(n for n in self.shape if isinstance(n, int))


class _Opaque:
    """Any other object of the pickle: accepts whatever it is built with, keeps nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *rest: Any) -> _Shape:
    return _Shape(size)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


class _ShapesUnpickler(pickle.Unpickler):
    _KNOWN = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    }

    def find_class(self, module: str, name: str) -> Any:
        return self._KNOWN.get((module, name), _Opaque)

    def persistent_load(self, pid: Any) -> Any:
        return _Opaque()


def checkpoint_summary(store: ObjectStore, key: str, name: str) -> dict[str, Any]:
    """{"parameter_count", "kind", "step", "config"} of an engine vision checkpoint."""
    with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as copy:
        with store.open_stream(key) as stream:
            copied = 0
            while chunk := stream.read(4 * 1024 * 1024):
                copied += len(chunk)
                if copied > MAX_CHECKPOINT_BYTES:
                    raise ModelFileError(f"{name} is larger than a vision checkpoint can be")
                copy.write(chunk)
        copy.seek(0)
        try:
            with zipfile.ZipFile(copy) as archive:
                pickled = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
                with archive.open(pickled) as raw:
                    buffered = io.BytesIO()
                    shutil.copyfileobj(raw, buffered)
            payload = _ShapesUnpickler(io.BytesIO(buffered.getvalue())).load()
        except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError) as error:
            raise ModelFileError(f"{name} is not a torch checkpoint ({error})") from None
        except Exception as error:  # noqa: BLE001 - any malformed pickle is a bad file
            raise ModelFileError(f"{name} could not be read ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("state"), dict):
        raise ModelFileError(f"{name} is not an engine checkpoint (no state)")
    config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    count = sum(
        _numel(value)
        for part, value in payload["state"].items()
        if isinstance(value, dict) and not str(part).startswith(_NOT_NETWORKS)
    )
    if count == 0:
        raise ModelFileError(f"{name} holds no network weights")
    return {
        "parameter_count": count,
        "kind": str(payload.get("kind", "")),
        "step": payload.get("step") if isinstance(payload.get("step"), int) else None,
        "config": {k: config[k] for k in ("model", "data") if isinstance(config.get(k), dict)},
    }


def _numel(value: Any) -> int:
    if isinstance(value, _Shape):
        return value.numel
    if isinstance(value, dict):
        return sum(_numel(v) for v in value.values())
    return 0
