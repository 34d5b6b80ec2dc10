"""The erasure job: a data subject's records out of every searched dataset version.

For each dataset version listed in the params, the handler downloads its files (checking
their sha256), asks the engine where the subject's records are (engine.data.erasure:
the keyed subject index of a pipeline output or of a raw upload indexed at ingestion, the
subject field of raw JSONL uploaded before that, or a bounded full-text scan of data that
names nobody), and, for a version that holds any,
writes the version again without them and stores every file of the new version under the
attempt's output prefix. The platform turns the result into new dataset versions and then
deletes the old ones (controlplane/gdpr/erasure.py).

Params (set by the platform; nothing here is secret):
    request_id   the SubjectRequest
    versions     [{"id", "label", "search": "field" | "index" | "scan", "subject_field",
                   "files": [{"name", "input"}]}]: `input` is the file's index in
                 spec.inputs
(not a param: spec.subject_secrets, {"identifiers", "keys", "hashes"}: the subject in clear
and the project's subject keys, in the dispatch message only.)

A version searched by its index ("index") is looked up first with its index files alone
(`_nobody_by_index`): one that holds nobody is answered without downloading or reading
a record; the rest is downloaded only when the subject is there.

Result, per version (counts, names, keys and hashes only: never a matched text):
    {"id", "found": {"method", "records", "files": [{"name", "records"}],
                     "bytes_scanned"?, "scan_budget_bytes"?},   # method "scan" only
     "new_files": [{"name", "key", "sha256", "size", "status"}],  # status: rewritten/unchanged
     "unchanged": [{"name", "key", "sha256"}],   # reusable: the same bytes as the old object
     "dropped": [names], "rebuild": [], "token_shards": {...}}

A pipeline output's token shards (tokens/) are cut by the engine (the erased documents'
spans out of each split's stream, the same bytes a re-tokenization gives): the new
version's tokens/ files are stored with the rest (leading shards unchanged) and `rebuild`
stays empty. Only where a cut is not exact, or the tokenizer's vocabulary holds the
subject, are they dropped: `rebuild` is ["tokens"] (or ["tokens", "tokenizer"]), the
reason in `token_shards`, and the platform runs the data pipeline again.

Find-only mode (params `mode: "find"`, an approved access request, GDPR Art. 15): the same
downloads and search, nothing rewritten; for each version that holds the subject, its
records (file, line, the record) are written to one JSONL uploaded under the attempt's
prefix as `access/v<id>.jsonl` (not an artifact: the platform zips it into the request's
export and deletes it). Result per version: {"id", "found", "part": {"key", "sha256",
"size"} | null, "not_searched"?}.

Idempotent per attempt and resumable: the engine writes byte-identical files for the same
input and subject, and keys are the attempt's own, so a killed attempt re-run (a new
attempt) reports the same names, sizes and sha256 under its own prefix.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from workers.runtime import JobContext, JobFailed

CLEAN_DIR = "clean/"
TOKENS_DIR = "tokens/"
# What a lookup through a subject index reads (in the engine's folder): a pipeline
# output's manifest and index, or a raw upload's index and its manifest.
INDEX_NAMES = frozenset({"manifest.json", "subject_index.npy", "subject_index.json"})


def _secrets(ctx: JobContext) -> tuple[list[str], dict[str, str], list[str]]:
    secrets = ctx.spec.subject_secrets or {}
    identifiers = [str(v) for v in secrets.get("identifiers") or [] if str(v).strip()]
    keys = {str(k): str(v) for k, v in (secrets.get("keys") or {}).items()}
    hashes = [str(h) for h in secrets.get("hashes") or []]
    if not identifiers and not hashes:
        # Without the subject the search finds nobody, which would read as "nothing to
        # erase": refuse instead (a platform that did not send the secret field).
        raise JobFailed("the dispatch message carried no subject to erase (subject_secrets)")
    return identifiers, keys, hashes


def _layout(version: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(kind, {version file name: path inside the folder the engine reads}).

    A pipeline output keeps its records under clean/ and its token shards beside them
    under tokens/; the engine reads one folder with the records at its root and the
    shards under tokens/, so the names are mapped both ways."""
    names = [f["name"] for f in version["files"]]
    if CLEAN_DIR + "manifest.json" in names:
        mapping = {}
        for name in names:
            if name.startswith(CLEAN_DIR):
                mapping[name] = name[len(CLEAN_DIR) :]
            elif name.startswith(TOKENS_DIR):
                mapping[name] = name
            else:
                mapping[name] = "extra/" + name
        return "output", mapping
    kind = "output" if "manifest.json" in names else "raw"
    return kind, {name: name for name in names}


def _new_name(inside: str, kind: str) -> str:
    """The version file name of a result file the old version did not have: the engine's
    folder holds the records at its root and the token shards under tokens/."""
    if kind != "output" or inside.startswith(TOKENS_DIR):
        return inside
    return CLEAN_DIR + inside


def _key_for(folder: Path, keys: dict[str, str], current: bytes | None) -> bytes | None:
    """The key the folder's subject index was built with (its manifest names its id): the
    project's keys of every generation are in the message, so an index built before a
    rotation is read with its own."""
    from engine.data.raw_subject_index import load_raw_index

    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    else:
        # A raw upload indexed at ingestion: its index manifest names the key the same way.
        manifest = load_raw_index(folder)
    if manifest is None:
        return current
    if not manifest.get("subject_index"):
        return current
    if not manifest.get("subject_keyed"):
        return None
    key_id = manifest.get("subject_key_id", "")
    if key_id not in keys:
        raise JobFailed(
            f"the subject index was built with key id {key_id}, which is not one of this "
            "project's subject keys: re-run the data pipeline on the version's source"
        )
    return bytes.fromhex(keys[key_id])


def _download(ctx: JobContext, version: dict[str, Any], source: Path, mapping, wanted) -> dict:
    """Download the version's files whose folder path is in ``wanted`` (all when None) and
    not already there; {version file name: its ArtifactRef} of every file."""
    refs = {}
    for item in version["files"]:
        ref = ctx.spec.inputs[item["input"]]
        refs[item["name"]] = ref
        target = source / mapping[item["name"]]
        if (wanted is None or mapping[item["name"]] in wanted) and not target.exists():
            ctx.download(ref.uri, target, ref.sha256)
            ctx.check_stop()
    return refs


def _find_in(source: Path, version: dict[str, Any], subject, current) -> Any:
    """The engine's find over a downloaded version (its index alone, or all its files):
    by the identifiers when the job has them, else by their keyed hashes."""
    from engine.data.erasure import find_subject

    identifiers, keys, hashes = subject
    return find_subject(
        source,
        identifiers=identifiers,
        subject_hashes=hashes if not identifiers else (),
        subject_field=version.get("subject_field") or "",
        key=_key_for(source, keys, current),
    )


def _nobody_by_index(
    ctx: JobContext, version: dict[str, Any], source: Path, mapping, subject, current
) -> dict | None:
    """For a version searched by its subject index: download the index alone and look the
    subject up. The `found` of a version that holds nobody, with no record downloaded or
    read; None when the records are needed (hits, or files the index does not cover)."""
    from engine.data.erasure import ErasureError

    if version["search"] != "index":
        return None
    _download(ctx, version, source, mapping, INDEX_NAMES)
    try:
        report = _find_in(source, version, subject, current)
    except ErasureError:
        return None  # the whole download says why, as before
    by_index = {f.name for f in report.files if f.method == "index"}
    data = {inside for inside in mapping.values() if inside not in INDEX_NAMES}
    covered = by_index and len(by_index) == len(report.files)
    if not covered or report.hits or (report.kind == "raw" and not data <= by_index):
        return None
    back = {inside: name for name, inside in mapping.items()}
    return {
        "method": "index",
        "records": 0,
        "files": [{"name": back.get(name, name), "records": 0} for name in sorted(by_index)],
    }


def _scan_extent(find) -> dict[str, int]:
    """How much of a "not indexed" version the full-text scan read, and its budget."""
    if not any(f.method == "scan" for f in find.files):
        return {}
    return {"bytes_scanned": find.bytes_scanned, "scan_budget_bytes": find.scan_budget_bytes}


def _erase_version(
    ctx: JobContext,
    version: dict[str, Any],
    work: Path,
    subject: tuple[list[str], dict[str, str], list[str]],
) -> dict[str, Any]:
    from engine.data.erasure import ErasureError, erase_subject

    identifiers, keys, hashes = subject
    current = bytes.fromhex(keys[next(iter(keys))]) if keys else None
    kind, mapping = _layout(version)
    source = work / f"v{version['id']}" / "in"
    output = work / f"v{version['id']}" / "out"
    nobody = _nobody_by_index(ctx, version, source, mapping, subject, current)
    if nobody is not None:
        return {
            "id": version["id"],
            "found": nobody,
            "new_files": [],
            "unchanged": [],
            "dropped": [],
            "rebuild": [],
            "token_shards": {},
        }
    refs = _download(ctx, version, source, mapping, None)
    key = _key_for(source, keys, current)
    try:
        report = erase_subject(
            source,
            output,
            identifiers=identifiers,
            subject_hashes=hashes if not identifiers else (),
            subject_field=version.get("subject_field") or "",
            key=key,
        )
    except ErasureError as error:
        # Not searched through (a scan budget, a format the engine cannot read): said in
        # the result and the certificate; the residue scan is then the judge.
        return {
            "id": version["id"],
            "found": {"method": version["search"], "records": 0, "files": []},
            "new_files": [],
            "unchanged": [],
            "dropped": [],
            "rebuild": [],
            "not_searched": str(error)[:500],
        }
    back = {inside: name for name, inside in mapping.items()}
    found = {
        "method": report.find.files[0].method if report.find.files else version["search"],
        "records": report.records_removed,
        "files": [{"name": back.get(f.name, f.name), "records": f.hits} for f in report.find.files],
        **_scan_extent(report.find),
    }
    outcome: dict[str, Any] = {
        "id": version["id"],
        "found": found,
        "new_files": [],
        "unchanged": [],
        "dropped": [back.get(name, name) for name in report.dropped],
        "rebuild": list(report.rebuild) if report.records_removed else [],
        "token_shards": report.token_shards if report.records_removed else {},
    }
    if not report.records_removed:
        return outcome  # nothing of the subject here: the version stays as it is
    for result in report.files:
        name = back.get(result.name) or _new_name(result.name, kind)
        if name.startswith("extra/"):
            name = name[len("extra/") :]
        if result.status == "unchanged" and name in refs:
            ref = refs[name]
            outcome["unchanged"].append({"name": name, "key": ref.uri, "sha256": ref.sha256})
        # Every file of the new version is stored anew under the job's prefix: a dataset
        # file's object key belongs to one version (the old one's objects are deleted).
        stored = ctx.publish(output / result.name, f"v{version['id']}/{name}")
        outcome["new_files"].append(
            {
                "name": name,
                "key": stored["key"],
                "sha256": stored["sha256"],
                "size": stored["size"],
                "status": result.status,
                "records_removed": result.records_removed,
            }
        )
        ctx.check_stop()
    return outcome


def _record_lines(path: Path, positions: list[int], zero_based: bool) -> list[tuple[int, Any]]:
    """(1-based line, record) of the hits of one JSONL file (gzip read through)."""
    from engine.data.erasure import open_binary

    wanted = {p + 1 if zero_based else p for p in positions}
    found = []
    with open_binary(path) as lines:
        for number, line in enumerate(lines, 1):
            if number in wanted:
                text = line.decode("utf-8", errors="replace").rstrip("\n")
                try:
                    found.append((number, json.loads(text)))
                except ValueError:
                    found.append((number, text))  # a scanned line that is not JSON
    return found


def _find_version(
    ctx: JobContext,
    version: dict[str, Any],
    work: Path,
    subject: tuple[list[str], dict[str, str], list[str]],
) -> dict[str, Any]:
    """Where the subject is in one version, and their records as one JSONL (find only)."""
    from engine.data.erasure import ErasureError, _raw_kind

    _identifiers, keys, _hashes = subject
    current = bytes.fromhex(keys[next(iter(keys))]) if keys else None
    _kind, mapping = _layout(version)
    source = work / f"v{version['id']}" / "in"
    nobody = _nobody_by_index(ctx, version, source, mapping, subject, current)
    if nobody is not None:
        return {"id": version["id"], "found": nobody, "part": None}
    _download(ctx, version, source, mapping, None)
    try:
        report = _find_in(source, version, subject, current)
    except ErasureError as error:
        return {
            "id": version["id"],
            "found": {"method": version["search"], "records": 0, "files": []},
            "part": None,
            "not_searched": str(error)[:500],
        }
    back = {inside: name for name, inside in mapping.items()}
    rows, not_read = [], []
    for findings in report.files:
        if not findings.positions:
            continue
        name = back.get(findings.name, findings.name)
        path = source / findings.name
        if _raw_kind(path) is None:
            not_read.append(f"{name} (records not readable as lines)")
            continue
        for line, record in _record_lines(path, findings.positions, report.unit == "row"):
            rows.append({"file": name, "line": line, "record": record})
    found = {
        "method": report.files[0].method if report.files else version["search"],
        "records": report.hits,
        "files": [
            {"name": back.get(f.name, f.name), "records": f.hits} for f in report.files if f.hits
        ],
        **_scan_extent(report),
    }
    outcome: dict[str, Any] = {"id": version["id"], "found": found, "part": None}
    if not_read or report.not_searched:
        outcome["not_searched"] = ", ".join([*report.not_searched, *not_read])[:500]
    if rows:
        part = work / f"v{version['id']}.jsonl"
        with part.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        stored = ctx.upload(part, "access", f"v{version['id']}.jsonl")
        outcome["part"] = {"key": stored.key, "sha256": stored.sha256, "size": stored.size}
    return outcome


def run_erasure(ctx: JobContext) -> dict[str, Any]:
    params = ctx.spec.params
    subject = _secrets(ctx)
    if params.get("mode") == "find":
        return _run_find(ctx, subject)
    versions = params.get("versions") or []
    outcomes = []
    with tempfile.TemporaryDirectory(prefix=f"job-{ctx.spec.job_id}-") as work:
        for position, version in enumerate(versions):
            ctx.progress(0.05 + 0.9 * position / max(1, len(versions)), f"{version['label']}")
            outcomes.append(_erase_version(ctx, version, Path(work), subject))
    affected = [o for o in outcomes if o["found"]["records"]]
    ctx.log(f"searched {len(outcomes)} dataset versions; {len(affected)} held the subject")
    return {
        "request_id": params.get("request_id"),
        "versions": outcomes,
        "records": sum(o["found"]["records"] for o in outcomes),
    }


def _run_find(ctx: JobContext, subject) -> dict[str, Any]:
    """An access request's search: nothing is rewritten or stored but the subject's parts."""
    versions = ctx.spec.params.get("versions") or []
    outcomes = []
    with tempfile.TemporaryDirectory(prefix=f"job-{ctx.spec.job_id}-") as work:
        for position, version in enumerate(versions):
            ctx.progress(0.05 + 0.9 * position / max(1, len(versions)), f"{version['label']}")
            outcomes.append(_find_version(ctx, version, Path(work), subject))
    ctx.log(f"searched {len(outcomes)} dataset versions (find only)")
    return {
        "request_id": ctx.spec.params.get("request_id"),
        "mode": "find",
        "versions": outcomes,
        "records": sum(o["found"]["records"] for o in outcomes),
    }
