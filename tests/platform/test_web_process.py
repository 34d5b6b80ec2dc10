"""The web process stays small: importing the whole URL tree never loads torch or the engine."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
import django
django.setup()
import controlplane.urls, controlplane.wsgi  # every view, serializer and service
from django.urls import get_resolver
get_resolver().url_patterns
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'engine', 'numpy', 'mlflow'))
print(','.join(heavy))
"""


def test_web_process_never_imports_torch():
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "CONTROLPLANE_DATA_DIR": str(ROOT / "var" / "test-web"),
            "PATH": "/usr/bin:/bin",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
