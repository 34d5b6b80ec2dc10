"""A project's audit chain exported as JSONL and verified offline, without Django (issue 16)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[3]


def _append(project, actor, count: int = 3):
    from controlplane.audit.services import audit_append

    for step in range(count):
        audit_append(
            project=project,
            actor=actor,
            action="test.step",
            artifact=("step", step),
            payload={"step": step, "note": "naïve ✓", "nested": {"b": [1, 2.5, None], "a": True}},
        )


def _export(team) -> list[str]:
    from controlplane.audit.export import audit_export

    return list(audit_export(team.project, actor=team.owner))


def _write(tmp_path, lines: list[str]) -> Path:
    path = tmp_path / "export.jsonl"
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines))
    return path


def _offline(path: Path, *extra: str) -> subprocess.CompletedProcess:
    """The verifier as an auditor runs it: no Django settings, no database, no broker."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO / "platform")}
    return subprocess.run(
        [sys.executable, "-m", "controlplane.audit.verify", str(path), *extra],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _verify(lines: list[str], key: str | None = None):
    from controlplane.audit.verify import verify_export

    verdict, _header = verify_export([line.rstrip("\n") for line in lines], key)
    return verdict


def _events(lines):
    return [i for i, line in enumerate(lines) if json.loads(line)["type"] == "event"]


def test_an_export_of_a_real_chain_verifies_offline(team, tmp_path):
    from controlplane.audit.models import AuditChain

    _append(team.project, team.owner)
    lines = _export(team)
    header = json.loads(lines[0])
    chain = AuditChain.objects.get(project_id=team.project.pk)
    assert header["format"] == "controlplane-audit-export" and header["version"] == 1
    assert header["project_slug"] == "alpha" and header["chain_id"] == chain.pk
    assert (header["event_count"], header["head_hash"]) == (chain.length, chain.head_hash)
    events = [json.loads(line) for line in lines[1:]]
    assert [event["seq"] for event in events] == list(range(1, chain.length + 1))
    assert events[-1]["action"] == "audit.exported"  # the export is in its own export

    result = _offline(_write(tmp_path, lines))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"OK: project alpha: {chain.length} events, chain verified")

    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO / "platform")}
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, controlplane.audit.verify; print(sorted(sys.modules))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "django" not in imported and "controlplane.audit.models" not in imported


def test_edits_deletions_reordering_and_truncation_are_named(team, tmp_path):
    _append(team.project, team.owner, count=4)
    lines = _export(team)
    events = _events(lines)

    edited = list(lines)
    event = json.loads(edited[events[2]])
    event["payload"]["step"] = 99
    edited[events[2]] = json.dumps(event)
    verdict = _verify(edited)
    assert verdict.problems[0][0] == 3 and "does not match its hash" in verdict.problems[0][1]

    deleted = lines[: events[1]] + lines[events[1] + 1 :]
    verdict = _verify(deleted)
    assert verdict.problems[0] == (2, "event #2 is missing or out of place (line 3 holds #3)")

    reordered = list(lines)
    reordered[events[1]], reordered[events[2]] = reordered[events[2]], reordered[events[1]]
    assert _verify(reordered).problems[0][0] == 2

    truncated = lines[:-2]
    result = _offline(_write(tmp_path, truncated))
    assert result.returncode == 1
    count = len(events)
    assert result.stdout.startswith(f"BROKEN: project alpha at event #{count - 1}: ")
    assert f"the header says {count} events but the export holds {count - 2}" in result.stdout

    cut = lines[:-1] + [lines[-1][:20]]  # the last line cut mid-way
    assert "is not JSON" in _verify(cut).problems[0][1]

    assert _offline(_write(tmp_path, ["not json"])).returncode == 2
    assert _offline(tmp_path / "missing.jsonl").returncode == 2


def test_anchors_are_exported_and_checked_with_and_without_the_key(team, tmp_path):
    from controlplane.audit.anchors import anchor_keys

    _append(team.project, team.owner)
    call_command("audit_anchor", "--project", "alpha")
    _append(team.project, team.owner, count=2)
    lines = _export(team)
    anchors = [json.loads(line) for line in lines if json.loads(line)["type"] == "anchor"]
    assert len(anchors) == 1 and json.loads(lines[0])["anchor_count"] == 1
    path = _write(tmp_path, lines)
    key = anchor_keys()[0].decode()

    without = _offline(path)
    assert without.returncode == 0 and "signatures not checked" in without.stdout
    right = _offline(path, "--anchor-key", key)
    assert right.returncode == 0 and "1 anchors hold and their signatures verify" in right.stdout
    wrong = _offline(path, "--anchor-key", "not-the-key")
    assert wrong.returncode == 1 and "wrong key, or a forged anchor" in wrong.stdout

    # Cut the chain below the anchored head: the anchor names the truncation.
    length = anchors[0]["document"]["length"]
    header = json.loads(lines[0])
    kept = [line for line in lines[1:] if json.loads(line).get("seq", length) < length]
    last = json.loads(kept[-1])
    header.update(event_count=last["seq"], head_hash=last["hash"])
    anchor_lines = [line for line in lines if json.loads(line)["type"] == "anchor"]
    verdict = _verify([json.dumps(header), *kept, *anchor_lines], key)
    assert "TRUNCATED" in verdict.problems[0][1]

    # A forged anchor (head moved) fails its signature with the key.
    forged = dict(anchors[0], document={**anchors[0]["document"], "head_hash": "f" * 64})
    verdict = _verify([*lines[: -len(anchor_lines)], json.dumps(forged)], key)
    assert "bad signature" in verdict.problems[0][1]


def test_the_management_command_wraps_the_verifier(team, tmp_path, capsys):
    from django.core.management.base import CommandError

    lines = _export(team)
    call_command("audit_verify_export", str(_write(tmp_path, lines)))
    assert capsys.readouterr().out.startswith("OK: ")
    with pytest.raises(CommandError):
        call_command("audit_verify_export", str(_write(tmp_path, lines[:-1])))


def test_export_roles_on_the_api_and_the_page(team, api):
    from controlplane.audit.models import AuditEvent

    url = f"/api/v1/projects/{team.project.pk}/audit/export/"
    for user in (team.owner, team.compliance):
        response = api(user).get(url)
        assert response.status_code == 200, user
        assert response["Content-Type"].startswith("application/x-ndjson")
        body = b"".join(response.streaming_content).decode().splitlines()
        assert json.loads(body[0])["type"] == "header"
        assert _verify(body).ok
    assert api(team.engineer).get(url).status_code == 403
    assert api(team.viewer).get(url).status_code == 403
    assert api(team.outsider).get(url).status_code == 404
    exported = AuditEvent.objects.filter(project_id=team.project.pk, action="audit.exported")
    assert sorted(exported.values_list("actor_id", flat=True)) == sorted(
        [team.owner.pk, team.compliance.pk]
    )

    page = f"/projects/{team.project.pk}/audit/"
    client = Client()
    client.force_login(team.compliance)
    assert f"{page}export/" in client.get(page).content.decode()
    response = client.get(f"{page}export/")
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    assert _verify(b"".join(response.streaming_content).decode().splitlines()).ok
    client.force_login(team.viewer)
    assert f"{page}export/" not in client.get(page).content.decode()
    assert client.get(f"{page}export/").status_code == 403
    client.force_login(team.outsider)
    assert client.get(f"{page}export/").status_code == 404
