"""The model card: what a compliance officer reads before signing a version off."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_card_holds_the_training_data_its_license_and_the_pipeline_figures(
    team, make_version, plays_version
):
    from controlplane.registry.card import model_card_markdown

    card = model_card_markdown(make_version(datasets=[plays_version]))
    assert card.startswith("# Model card: gpt v1")
    assert "### Plays v2" in card
    assert "Public domain (Project Gutenberg)" in card
    assert "https://www.gutenberg.org/ebooks/100" in card
    assert "1,200 records read, 1,000 kept (200 removed)" in card
    # What each filter dropped, with its reasons, and the summary lines.
    assert "too_few_words 90" in card and "symbol_word_ratio 10" in card
    assert "Quality filters dropped 100 records." in card
    assert "PII redactions: 8 spans replaced in 7 records (email 5, phone 3)." in card
    assert "Toxicity: 12 records above the threshold removed." in card
    assert "Duplicates: 88 records removed (exact dedup 60, near dedup 28)." in card
    # Automatic limits from what the registry knows.
    assert "Trained on about 5,400,000 characters of text from Plays" in card
    assert "Sees at most 96 tokens at a time" in card
    assert "Not evaluated yet" in card


def test_card_holds_settings_evaluation_lineage_and_audit_events(team, make_version, evaluate):
    from controlplane.audit.services import audit_append
    from controlplane.registry.card import INTENDED_USE_PROMPT, model_card_markdown

    version = make_version()
    evaluate(version, {"val_loss": 1.8731, "perplexity": 6.51, "toxicity_share": 0.03125})
    audit_append(
        project=team.project,
        actor=team.engineer,
        action="model_version.registered",
        artifact=version,
        payload={"model": "gpt", "version": 1},
    )
    card = model_card_markdown(version)
    assert INTENDED_USE_PROMPT in card  # nobody wrote one yet: the card asks for it
    assert "| train.max_iters | 200 |" in card and "| preset | tiny |" in card
    assert "| val_loss | 1.873 |" in card and "| perplexity | 6.51 |" in card
    assert "3.1% of its evaluation samples were scored toxic" in card
    assert f"source job {version.source_job_id} (pretrain, succeeded)" in card
    assert "model_version.registered" in card and "| engineer |" in card
    assert "No dataset version is recorded" in card


def test_user_markdown_is_rendered_but_html_in_it_is_escaped(team, make_version):
    from controlplane.registry.card import model_card_markdown, render_markdown

    version = make_version(
        intended_use="Writing **pastiche**.\n\n<script>alert('x')</script>\n"
        '<img src=x onerror="alert(1)">',
        limitations="Not for <b>medical</b> advice.",
    )
    html = render_markdown(model_card_markdown(version))
    assert "<strong>pastiche</strong>" in html
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(" in html and "&lt;b&gt;medical&lt;/b&gt;" in html


def test_a_model_name_cannot_inject_markup_through_the_card(team, make_version):
    from controlplane.registry.card import model_card_markdown, render_markdown

    version = make_version(description="<iframe src=//evil>")
    html = render_markdown(model_card_markdown(version))
    assert "<iframe" not in html and "&lt;iframe" in html


def test_version_page_shows_the_rendered_card_and_card_md_downloads(
    team, client, make_version, plays_version
):
    version = make_version(datasets=[plays_version], intended_use="<script>x</script>Poems")
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/models/gpt/v1/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<h1>Model card: gpt v1</h1>" in html
    assert "Public domain (Project Gutenberg)" in html
    assert "&lt;script&gt;x&lt;/script&gt;Poems" in html and "<script>x" not in html
    download = client.get(f"/projects/{team.project.pk}/models/gpt/v1/card.md")
    assert download.status_code == 200
    assert download["Content-Type"].startswith("text/markdown")
    assert 'filename="gpt-v1-card.md"' in download["Content-Disposition"]
    assert download.content.decode().startswith("# Model card: gpt v1")
    assert version.pk


def test_card_api_answers_markdown_to_members_and_404_to_others(team, api, make_version):
    make_version()
    url = f"/api/v1/projects/{team.project.pk}/models/gpt/versions/1/card/"
    response = api(team.viewer).get(url)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/markdown")
    assert response.content.decode().startswith("# Model card: gpt v1")
    assert api(team.outsider).get(url).status_code == 404
    missing = api(team.viewer).get(url.replace("/1/", "/9/"))
    assert missing.status_code == 404 and "version 9" in missing.json()["error"]["message"]


def test_card_reads_a_real_data_pipeline_report(
    team, make_upload, make_ready_version, run_on_worker, make_version
):
    """The report as the engine writes it (not a hand-made dict): the card finds its
    figures, PII redactions and duplicates included."""
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.services import job_create
    from controlplane.registry.card import model_card_markdown
    from engine.data.corpora import shakespeare_files

    # One play (a record), with an e-mail address in it, twice under two names: the
    # second copy is an exact duplicate.
    play = shakespeare_files("modern")[0].read_bytes() + b"\n\nWrite to portia@belmont.example.\n"
    dataset = dataset_create(
        project=team.project,
        actor=team.engineer,
        name="Speeches",
        slug="speeches",
        kind="text",
        license="CC0",
        source="hand-typed",
    )
    raw = make_ready_version(dataset, team.engineer, {"a.txt": play, "b.txt": play})
    pipeline = run_on_worker(
        job_create(
            project=team.project,
            kind="data_pipeline",
            actor=team.engineer,
            params={"dataset_version_id": raw.pk, "val_fraction": 0.5},
        )
    )
    assert pipeline.state == "succeeded", pipeline.error
    derived = pipeline.produced_versions.get()
    # The lineage holds the uploaded version and the one derived from it, as registered.
    card = model_card_markdown(make_version(datasets=[raw, derived]))
    report = derived.report
    # The text counted once: what went into the pipeline, not that plus the upload.
    assert f"Trained on about {report['input']['bytes']:,} characters" in card
    assert f"{report['records_read']:,} records read" in card
    pii = report["stages"]["pii"]
    assert f"PII redactions: {sum(pii['counts'].values()):,} spans replaced" in card
    assert "EMAIL" in card and "CC0" in card
    duplicates = sum(
        report["stages"][s]["removed_total"]
        for s in ("exact_dedup", "near_dedup")
        if s in report["stages"]
    )
    assert f"Duplicates: {duplicates:,} record" in card
    # Stages in the order they ran, whatever order the JSONB column returns them in.
    assert card.index("| normalize |") < card.index("| pii |") < card.index("| exact_dedup |")
