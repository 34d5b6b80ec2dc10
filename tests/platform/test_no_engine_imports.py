"""platform/ never imports the engine or torch, not even lazily inside a function.

The web process must stay small and start fast; what it needs from the engine it asks a
subprocess for (controlplane/engine_tools.py). Checked on the source, so an import hidden
in a rarely used view is caught too.
"""

import ast
from pathlib import Path

PLATFORM = Path(__file__).resolve().parents[2] / "platform"
FORBIDDEN = {"engine", "torch"}


def _imported_roots(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


def test_platform_source_never_imports_engine_or_torch():
    found = [
        f"{path.relative_to(PLATFORM)}:{line} imports {root}"
        for path in sorted(PLATFORM.rglob("*.py"))
        for line, root in _imported_roots(ast.parse(path.read_text(encoding="utf-8")))
        if root in FORBIDDEN
    ]
    assert found == []
