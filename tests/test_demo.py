"""`python manage.py demo --no-serve` walks the embedded default end to end and exits 0.

The embedded default on purpose: SQLite, the local object store and the filesystem broker,
with real worker processes, exactly what `make demo` gives a new user.
"""

import os
import re
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
    # --quick: seconds per training stage instead of minutes; the walk is the same.
    for args in (["migrate", "--noinput"], ["demo", "--no-serve", "--quick"]):
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
    assert "sample grids (one row per digit 0-9)" in out
    assert "Post-training" in out and "prefers the real continuation: accuracy 50.0 % ->" in out
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
    # FinOps: the rate card and budget are set before any job runs, and the overview's
    # figures are the demo's own measured CPU hours, priced.
    assert re.search(r"rate card v\d+ of .+: 0\.12 EUR per CPU-hour, 2\.50 per GPU-hour", out)
    assert "budget 0.05 EUR for " in out and "alerts at 80% and 100%" in out
    measured = re.search(r"(\d+) job attempts measured: (\d+\.\d+) CPU hours", out)
    assert measured and int(measured[1]) > 0 and float(measured[2]) > 0, out[-3000:]
    spent = re.search(r"spent this month: (\d+\.\d+) EUR of a 0\.05 budget", out)
    assert spent and float(spent[1]) > 0
    assert "most spent on: " in out and "/api/v1/orgs/" in out
    # The walk ends with the pages to open, each a real page of the demo project.
    looks = out.split("What to look at")[1]
    assert "/projects/1/jobs/5/" in looks and "samples/step_000020.png" in looks
    assert "/projects/1/models/shakespeare-gpt/" in looks and "?experiment=post" in looks
    assert (tmp_path / "db.sqlite3").exists()
