"""The job page renders for every job kind in every state, for every role, with the
parameters and results each kind really has (tests/platform/jobs/job_shapes.py); an
outsider gets 404. A template that iterates over a field whose type differs per kind
(a data pipeline's `records` is a count, an inspection's a list) fails here."""

from __future__ import annotations

import pytest

from tests.platform.jobs.job_shapes import ALL_KINDS, STATES, build_world, make_job

pytestmark = pytest.mark.django_db

ROLES = ("owner", "engineer", "viewer", "compliance", "admin")


@pytest.fixture
def world(team, make_upload):
    return build_world(team, make_upload)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_state_of_the_kind_renders_for_its_owner(kind, team, world, client):
    """The edit loop's share of the matrix below (make test-fast): one role, every state."""
    _renders_for(kind, team, world, client, roles=("owner",))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_state_of_the_kind_renders_for_every_role(kind, team, world, client):
    _renders_for(kind, team, world, client, roles=ROLES)


def _renders_for(kind, team, world, client, roles) -> None:
    jobs = [make_job(world, kind, state) for state in STATES]
    for role in roles:
        client.force_login(getattr(team, role))
        for job in jobs:
            url = f"/projects/{team.project.pk}/jobs/{job.pk}/"
            response = client.get(url)
            assert response.status_code == 200, (kind, job.state, role)
            page = response.content.decode()
            assert f"Job #{job.pk}" in page and job.state in page
            assert client.get(f"{url}charts.json").status_code == 200
            if not job.is_terminal:
                for part in ("header", "usage"):
                    assert client.get(url, {"part": part}).status_code == 200, (kind, part)
    client.force_login(team.outsider)
    for job in jobs:
        assert client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").status_code == 404
        assert (
            client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/charts.json").status_code == 404
        )


def _page(client, team, job, **query) -> str:
    response = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/", query)
    assert response.status_code == 200
    return response.content.decode()


def test_a_data_pipeline_shows_its_record_count_and_tokens(team, world, client):
    job = make_job(world, "data_pipeline", "succeeded")
    client.force_login(team.viewer)
    page = _page(client, team, job)
    assert "<th>records</th>" in page and ">97<" in page
    assert "tokens · train" in page and "95,000" in page
    assert "First records" not in page  # a count, not records to list


def test_an_inspection_lists_its_first_records_and_sizes_in_si_units(team, world, client):
    job = make_job(world, "inspect", "succeeded")
    client.force_login(team.viewer)
    page = _page(client, team, job)
    assert "First records" in page and "Before we proceed" in page
    assert "5.1 MB" in page  # humanize_bytes: decimal SI, as the demo prints


def test_checkpoints_show_their_step_and_a_humanized_size(team, world, client):
    job = make_job(world, "pretrain", "failed")
    client.force_login(team.engineer)
    page = _page(client, team, job)
    checkpoints = page[page.index("<h2>Checkpoints</h2>") :]
    assert '<td class="num">100</td>' in checkpoints
    assert "4.8 MB" in checkpoints and "4812345 bytes" in checkpoints
    assert "Resume from here" in checkpoints
    client.force_login(team.viewer)
    assert "Resume from here" not in _page(client, team, job)


def test_parameters_link_to_what_they_name(team, world, client):
    client.force_login(team.viewer)
    ppo = _page(client, team, make_job(world, "ppo", "succeeded"))
    base_url = f"/projects/{team.project.pk}/jobs/{world.base_job.pk}/"
    assert f'<a href="{base_url}">job {world.base_job.pk} (pretrain)</a>' in ppo
    assert "Reward model job" in ppo
    assert "<dt>beta</dt>" not in ppo and "<dt>kl_coef</dt>" in ppo  # nested settings, readable
    evaluate = _page(client, team, make_job(world, "evaluate", "succeeded"))
    assert f"/projects/{team.project.pk}/models/bard/v1/" in evaluate
    assert f"/projects/{team.project.pk}/datasets/{world.version.dataset_id}/v1/" in evaluate
    assert "input_names" not in evaluate.split('id="job-params"')[1].split("</section>")[0]
    pretrain = _page(client, team, make_job(world, "pretrain", "succeeded"))
    assert "?experiment=shakespeare" in pretrain


@pytest.mark.parametrize(
    ("kind", "metric", "before", "after", "verdict"),
    [
        ("reward", "eval/accuracy", "59.4", "81.2", "better"),
        ("sft", "eval/loss", "2.61", "1.94", "better"),
        ("ppo", "eval/reward", "-0.2", "0.65", "better"),
    ],
)
def test_post_training_shows_before_and_after_side_by_side(
    kind, metric, before, after, verdict, team, world, client
):
    client.force_login(team.viewer)
    page = _page(client, team, make_job(world, kind, "succeeded"))
    table = page.split('id="job-comparison"')[1].split("</section>")[0]
    row = table.split(f"<code>{metric}</code>")[1].split("</tr>")[0]
    assert before in row and after in row and verdict in row


def test_results_are_rounded_with_units(team, world, client):
    client.force_login(team.viewer)
    page = _page(client, team, make_job(world, "pretrain", "succeeded"))
    result = page.split('id="job-result"')[1].split("</details>")[0]
    assert "12,346" in result and "tokens/s" in result  # tokens_per_second
    assert "2 min 03 s" in result  # seconds
    assert "1.812" in result and "1.8123" not in result.split("<details")[0]
    assert "Raw result (JSON)" in result


def test_header_strip_shows_duration_queue_wait_attempts_and_worker(team, world, client):
    client.force_login(team.viewer)
    page = _page(client, team, make_job(world, "pretrain", "succeeded"))
    header = page.split('id="job-header"')[1].split("</section>")[0]
    assert "1 min 35 s" in header  # started 95 s before it finished
    assert "5.0 s" in header  # created 100 s ago, started 5 s later
    assert "<dt>Attempts</dt><dd>1</dd>" in header
    assert "celery@gpu-1" in header


def test_only_engineers_and_owners_see_cancel(team, world, client):
    job = make_job(world, "pretrain", "running")
    for role, sees in (
        ("owner", True),
        ("engineer", True),
        ("viewer", False),
        ("compliance", False),
    ):
        client.force_login(getattr(team, role))
        assert ("Cancel job" in _page(client, team, job)) is sees, role
