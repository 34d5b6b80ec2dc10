"""Check an audit export offline: no Django, no database, the standard library only.

    PYTHONPATH=platform python -m controlplane.audit.verify export.jsonl [--anchor-key KEY]

Recomputes every event's hash from its line and the chain links, checks the header's event
count and head hash, and checks each anchor's (length, head hash) against the chain and,
given the anchor key (AUDIT_ANCHOR_KEY), its signature. Prints a one-line verdict and the
first bad event. Exit code 0: the export verifies; 1: it is broken; 2: it cannot be read.
"""

from __future__ import annotations

import argparse
import hmac
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from controlplane.audit.chain import (
    HASHED_FIELDS,
    anchor_key_id,
    anchor_signature,
    canonical_document,
    event_hash,
)

EXPORT_FORMAT = "controlplane-audit-export"
EXPORT_VERSIONS = (1,)
GENESIS_HASH = "0" * 64
OK, BROKEN, UNREADABLE = 0, 1, 2


class Unreadable(Exception):
    """The input is not an audit export at all (exit code 2)."""


@dataclass
class Verdict:
    events: int = 0
    anchors: int = 0
    signatures_checked: bool = False
    problems: list[tuple[int | None, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def broken(self, seq: int | None, reason: str) -> None:
        self.problems.append((seq, reason))

    def describe(self, header: dict[str, Any]) -> str:
        where = f"project {header.get('project_slug') or header.get('project_id')}"
        if self.ok:
            if not self.anchors:
                anchored = ", no anchors in the export"
            elif self.signatures_checked:
                anchored = f", {self.anchors} anchors hold and their signatures verify"
            else:
                anchored = (
                    f", {self.anchors} anchors match the chain "
                    "(signatures not checked: no --anchor-key)"
                )
            return f"OK: {where}: {self.events} events, chain verified{anchored}"
        seq, reason = self.problems[0]
        at = f" at event #{seq}" if seq is not None else ""
        return f"BROKEN: {where}{at}: {reason}"


def read_export(lines: list[str]) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    """(the header, [(line number, parsed line or None when not JSON)])."""
    if not lines:
        raise Unreadable("the file is empty")
    try:
        header = json.loads(lines[0])
    except ValueError:
        raise Unreadable("line 1 is not JSON: not an audit export") from None
    if not isinstance(header, dict) or header.get("type") != "header":
        raise Unreadable("line 1 is not an audit export header")
    if header.get("format") != EXPORT_FORMAT or header.get("version") not in EXPORT_VERSIONS:
        raise Unreadable(
            f"unknown export format {header.get('format')!r} version {header.get('version')!r}"
        )
    body = []
    for number, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        try:
            body.append((number, json.loads(text)))
        except ValueError:
            body.append((number, None))
    return header, body


def _check_events(header: dict[str, Any], body: list, verdict: Verdict) -> dict[int, str]:
    """Recompute the chain; every event's hash by seq (up to the first bad one)."""
    hashes: dict[int, str] = {}
    prev_hash = GENESIS_HASH
    expected = 1
    for number, line in body:
        if line is None:
            verdict.broken(expected, f"line {number} is not JSON (the file was cut or edited)")
            return hashes
        if not isinstance(line, dict) or line.get("type") != "event":
            continue
        seq = line.get("seq")
        if seq != expected:
            verdict.broken(
                expected,
                f"event #{expected} is missing or out of place (line {number} holds #{seq})",
            )
            return hashes
        missing = [name for name in (*HASHED_FIELDS, "prev_hash", "hash") if name not in line]
        if missing:
            verdict.broken(seq, f"line {number} lacks {', '.join(missing)}")
            return hashes
        if line["project_id"] != header.get("project_id"):
            verdict.broken(
                seq, f"it belongs to project {line['project_id']}, not {header.get('project_id')}"
            )
            return hashes
        if line["prev_hash"] != prev_hash:
            verdict.broken(
                seq,
                f"its prev_hash {line['prev_hash'][:12]}… does not match the hash of event "
                f"#{seq - 1} ({prev_hash[:12]}…)",
            )
            return hashes
        recomputed = event_hash(
            prev_hash, canonical_document({name: line[name] for name in HASHED_FIELDS})
        )
        if recomputed != line["hash"]:
            verdict.broken(
                seq,
                f"its content does not match its hash (recomputed {recomputed[:12]}…, "
                f"recorded {str(line['hash'])[:12]}…): the event was altered",
            )
            return hashes
        hashes[seq] = prev_hash = line["hash"]
        expected += 1
    count, head = header.get("event_count"), header.get("head_hash")
    if len(hashes) != count:
        verdict.broken(
            len(hashes) + 1,
            f"the header says {count} events but the export holds {len(hashes)} "
            "(events were removed or added)",
        )
    elif prev_hash != head:
        verdict.broken(len(hashes), f"the last event's hash is not the header's head {head}")
    verdict.events = len(hashes)
    return hashes


def _check_anchors(
    header: dict[str, Any], body: list, hashes: dict[int, str], key: bytes | None, verdict: Verdict
) -> None:
    anchors = [line for _n, line in body if isinstance(line, dict) and line.get("type") == "anchor"]
    if header.get("anchor_count", len(anchors)) != len(anchors):
        verdict.broken(
            None,
            f"the header says {header.get('anchor_count')} anchors but the export "
            f"holds {len(anchors)}",
        )
    if header.get("anchors_error"):
        verdict.broken(None, f"anchors not exported: {header['anchors_error']}")
    for line in anchors:
        where = f"anchor {line.get('object_key')}"
        document = line.get("document")
        if line.get("problem") or not isinstance(document, dict):
            verdict.broken(None, f"{where}: {line.get('problem') or 'no document'}")
            continue
        fields = {name: value for name, value in document.items() if name != "signature"}
        length, head = fields.get("length"), fields.get("head_hash")
        if fields.get("scope") != header.get("scope") or fields.get("chain_id") != header.get(
            "chain_id"
        ):
            verdict.broken(None, f"{where} names chain {fields.get('scope')}, not this export's")
            continue
        if key is not None:
            if fields.get("key_id") != anchor_key_id(key):
                verdict.broken(
                    None,
                    f"{where} was signed with key id {fields.get('key_id')}, "
                    f"the given key is {anchor_key_id(key)} (wrong key, or a forged anchor)",
                )
                continue
            if not hmac.compare_digest(
                anchor_signature(fields, key), str(document.get("signature"))
            ):
                verdict.broken(None, f"{where} has a bad signature (forged or edited)")
                continue
        if not isinstance(length, int) or length < 1:
            verdict.broken(None, f"{where} has no valid length")
        elif length > len(hashes):
            verdict.broken(
                len(hashes) + 1,
                f"TRUNCATED: the chain was anchored at #{length} but the export ends at "
                f"#{len(hashes)}",
            )
        elif hashes.get(length) != head:
            verdict.broken(
                length, f"REWRITTEN: event #{length} differs from the head anchored at #{length}"
            )
    verdict.anchors = len(anchors)
    verdict.signatures_checked = key is not None


def verify_export(lines: list[str], anchor_key: str | None = None) -> tuple[Verdict, dict]:
    """Verify an export's lines; raises Unreadable when they are not an export."""
    header, body = read_export(lines)
    verdict = Verdict()
    hashes = _check_events(header, body, verdict)
    key = anchor_key.encode() if anchor_key else None
    _check_anchors(header, body, hashes, key, verdict)
    return verdict, header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controlplane.audit.verify",
        description="Verify an audit chain export (JSONL) offline.",
    )
    parser.add_argument("export", help="the .jsonl file from the audit export")
    parser.add_argument(
        "--anchor-key",
        help="the platform's AUDIT_ANCHOR_KEY, to check the anchors' signatures",
    )
    options = parser.parse_args(argv)
    try:
        with open(options.export, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        verdict, header = verify_export(lines, options.anchor_key)
    except (OSError, UnicodeDecodeError, Unreadable) as error:
        print(f"UNREADABLE: {options.export}: {error}")
        return UNREADABLE
    print(verdict.describe(header))
    for seq, reason in verdict.problems[1:]:
        at = f"event #{seq}: " if seq is not None else ""
        print(f"  also: {at}{reason}")
    return OK if verdict.ok else BROKEN


if __name__ == "__main__":
    sys.exit(main())
