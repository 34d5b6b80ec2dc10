"""`python manage.py demo --no-serve` walks the embedded default end to end and exits 0.

The embedded default on purpose: SQLite, the local object store and the filesystem broker,
with real worker processes, exactly what `make demo` gives a new user.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_walk_through_runs_on_the_embedded_default(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL"}
        and not k.startswith("OBJECT_STORE_")
    }
    env["CONTROLPLANE_DATA_DIR"] = str(tmp_path)
    # Fewer training steps than `make demo` runs: the walk is the same, the test quicker.
    for args in (["migrate", "--noinput"], ["demo", "--no-serve", "--train-steps", "20"]):
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "job 1 succeeded" in out and "sha256 matches upload: True" in out
    assert "cancelled" in out and "chain verified" in out and "BROKEN" not in out
    assert "sizes and sha256 verified" in out and "train + " in out and "20 steps" in out
    assert "ROMEO:" in out and "MLflow run " in out
    assert "sample grids (one row per digit)" in out
    assert "Post-training" in out and "held-out preference accuracy 0.500 ->" in out
    for kind in ("lora", "dpo", "reward", "ppo"):
        assert f": {kind}, " in out, kind
    assert "shakespeare-gpt v2: job" in out and "3 files checked" in out
    assert "val_loss             v1 -> v2:" in out
    assert "approved it: @production -> v2" in out and "approving it herself: you requested" in out
    assert "# Model card: shakespeare-gpt v2" in out and "Research demo" in out
    assert "replica ready in" in out and "streamed chat answer in" in out
    assert "archived: 3 requests" in out and 'PII {"EMAIL": 1} redacted' in out
    assert "[EMAIL]" in out and "romeo@verona" not in out.split("archived:")[1]
    assert "its replica drained and exited" in out
    assert "409 policy_denied, rule 2 (Data preparation before training)" in out
    assert "fix: run the data pipeline with the pii stage" in out
    assert "open violations" in out and "1 waived" in out
    assert "offline verifier: OK" in out
    assert "found 10 records in support-tickets v1" in out and "clean: True" in out
    assert "completed; certificate at" in out
    assert (tmp_path / "db.sqlite3").exists()
