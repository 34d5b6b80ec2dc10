"""The engine, asked from a separate process: the web process never imports it.

The engine pulls in numpy and torch; the platform only needs a few answers from it (the
data pipeline's default stages, whether a pipeline config is valid), so it runs the
engine's small JSON commands as a subprocess of the same interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class EngineToolError(RuntimeError):
    """The engine's command could not run (not a validation answer: a broken install)."""


def run_engine_json(module: str, *args: str, payload: Any = None, timeout: float = 60) -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        input=None if payload is None else json.dumps(payload),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise EngineToolError(
            f"python -m {module} {' '.join(args)} failed: {result.stderr.strip()[-500:]}"
        )
    return json.loads(result.stdout)


@lru_cache(maxsize=1)
def pipeline_defaults() -> dict[str, Any]:
    """The engine's default pipeline config (constant for a given install: asked once)."""
    return run_engine_json("engine.data.config", "defaults")


def pipeline_validate(raw: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(normalised config, None) or (None, the engine's message naming the bad key)."""
    answer = run_engine_json("engine.data.config", "validate", payload=raw)
    return (answer["config"], None) if answer["ok"] else (None, answer["error"])
