"""The jobs list and the experiments table: the columns a user compares runs by (final
metrics, duration, key parameters), their filters and sorting, in a fixed number of queries."""

import datetime as dt

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db


def _run(team, *, kind="pretrain", experiment="", losses=(), val_losses=(), params=None, **fields):
    """A job with `losses` logged as train/loss at steps 0, 10, 20... (val/loss likewise)."""
    from controlplane.jobs.models import Job, JobMetric

    job = Job.objects.create(
        project=team.project,
        kind=kind,
        experiment=experiment,
        params=params or {},
        created_by=team.engineer,
        **fields,
    )
    now = timezone.now()
    JobMetric.objects.bulk_create(
        [
            JobMetric(job=job, key=key, step=10 * n, value=value, recorded_at=now)
            for key, values in (("train/loss", losses), ("val/loss", val_losses))
            for n, value in enumerate(values)
        ]
    )
    return job


def _pretrain_params(lr=6e-4, batch=12, steps=100, seed=1337, preset="tiny"):
    return {
        "preset": preset,
        "seed": seed,
        "train": {"max_iters": steps, "batch_size": batch},
        "optim": {"lr": lr, "min_lr": 6e-5},
        "input_names": ["tokens/train-0.bin"],
    }


def _list(client, team, **query):
    return client.get(f"/projects/{team.project.pk}/jobs/", query)


def _compare(client, team, **query):
    return client.get(f"/projects/{team.project.pk}/experiments/", query)


# -- the jobs list ----------------------------------------------------------------------------


def test_the_jobs_list_shows_experiment_duration_and_final_loss(team, client):
    started = timezone.now() - dt.timedelta(minutes=3, seconds=20)
    _run(
        team,
        experiment="lr-sweep",
        losses=[4.2, 3.1, 2.71828],
        val_losses=[4.4, 2.9],
        state="succeeded",
        started_at=started,
        finished_at=started + dt.timedelta(minutes=3, seconds=20),
    )
    client.force_login(team.viewer)
    page = _list(client, team).content.decode()
    assert ">lr-sweep</a>" in page
    assert "3 min 20 s" in page
    assert "2.718" in page and "val 2.9" in page  # the last values, 4 significant digits


def test_the_jobs_list_filters_by_kind_state_and_experiment(team, client):
    a = _run(team, kind="pretrain", experiment="a", state="succeeded")
    b = _run(team, kind="diffusion", experiment="a", state="failed")
    c = _run(team, kind="pretrain", experiment="b", state="failed")
    client.force_login(team.viewer)

    def shown(**query):
        return {job.pk for job in _list(client, team, **query).context["jobs"]}

    assert shown() == {a.pk, b.pk, c.pk}
    assert shown(kind="pretrain") == {a.pk, c.pk}
    assert shown(state="failed") == {b.pk, c.pk}
    assert shown(experiment="a") == {a.pk, b.pk}
    assert shown(kind="pretrain", state="failed", experiment="b") == {c.pk}
    # A value that is not a choice is ignored, the valid ones still apply.
    assert shown(kind="pretrain", state="nonsense") == {a.pk, c.pk}
    page = _list(client, team, kind="diffusion", experiment="b").content.decode()
    assert "No job matches these filters." in page
    # Each filter is a labelled select.
    for name in ("kind", "state", "experiment"):
        assert (
            f'<label for="id_{name}">' in page and f'<select name="{name}" id="id_{name}">' in page
        )


def test_the_filters_are_kept_across_pages_and_live_refresh(team, client):
    for _ in range(27):
        _run(team, kind="gan", experiment="x")
    _run(team, kind="vae", experiment="x")
    client.force_login(team.viewer)
    page = _list(client, team, kind="gan", experiment="x").content.decode()
    assert 'href="?kind=gan&amp;experiment=x&amp;page=2"' in page
    assert f'hx-get="/projects/{team.project.pk}/jobs/?kind=gan&amp;experiment=x"' in page
    second = _list(client, team, kind="gan", experiment="x", page=2)
    assert len(second.context["jobs"]) == 2 and "page=1" in second.content.decode()
    rows = client.get(
        f"/projects/{team.project.pk}/jobs/", {"kind": "vae"}, headers={"HX-Request": "true"}
    )
    assert rows.content.decode().count("<tr>") == 1  # the fragment: rows only


def test_the_jobs_list_costs_the_same_queries_for_3_or_25_jobs(team, client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(3):
        _run(team, experiment="e", losses=[3.0, 2.0 - n / 10], state="succeeded")
    client.force_login(team.viewer)
    with CaptureQueriesContext(connection) as few:
        _list(client, team)
    for n in range(22):
        _run(team, experiment=f"e{n % 4}", losses=[3.0, 1.0], val_losses=[1.5])
    with CaptureQueriesContext(connection) as many:
        page = _list(client, team)
    assert len(page.context["jobs"]) == 25
    assert len(many) == len(few)


# -- the experiments table -------------------------------------------------------------------


@pytest.fixture
def sweep(team):
    """Four runs of an lr sweep, newest last; the second has no val loss."""
    return [
        _run(
            team,
            experiment="sweep",
            losses=[3, 2.5],
            val_losses=[2.7],
            params=_pretrain_params(lr=1e-3),
        ),
        _run(team, experiment="sweep", losses=[3, 2.0], params=_pretrain_params(lr=6e-4)),
        _run(
            team,
            experiment="sweep",
            losses=[3, 2.2],
            val_losses=[2.1],
            params=_pretrain_params(lr=3e-4),
        ),
        _run(
            team,
            experiment="sweep",
            losses=[3, 2.9],
            val_losses=[3.2],
            params=_pretrain_params(lr=1e-4, seed=7),
        ),
    ]


def test_the_table_shows_final_metrics_and_the_parameters_that_matter(team, client, sweep):
    client.force_login(team.viewer)
    response = _compare(client, team, experiment="sweep")
    table = response.context["table"]
    labels = [column.label for column in table.columns]
    assert labels[:4] == ["Run", "Kind", "State", "Duration"]
    assert "train/loss" in labels and "val/loss" in labels and "eval/accuracy" not in labels
    # Always-useful parameters, then those that differ (seed); never the unchanged min_lr
    # or the derived input_names.
    assert {"steps", "lr", "batch", "model", "seed"} <= set(labels)
    assert "optim.min_lr" not in labels and "input_names" not in labels
    newest = table.rows[0]
    assert newest.job == sweep[-1]
    values = dict(zip(labels[4:], newest.metrics + newest.params, strict=True))
    assert values["train/loss"] == 2.9 and values["val/loss"] == 3.2
    assert values["lr"] == 1e-4 and values["steps"] == 100 and values["seed"] == 7
    page = response.content.decode()
    assert '<td class="num">0.0001</td>' in page and '<td class="num">2.9</td>' in page


def test_sorting_by_a_column_and_back(team, client, sweep):
    client.force_login(team.viewer)
    by_val = _compare(client, team, experiment="sweep", sort="m:val/loss").context["table"]
    # Best first, and the run without a val loss last whichever way.
    assert [row.job for row in by_val.rows] == [sweep[2], sweep[0], sweep[3], sweep[1]]
    page = _compare(client, team, experiment="sweep", sort="m:val/loss").content.decode()
    assert 'aria-sort="ascending"' in page
    assert "sort=m%3Aval%2Floss&amp;order=desc" in page  # its header link flips the order
    flipped = _compare(client, team, experiment="sweep", sort="m:val/loss", order="desc")
    assert [row.job for row in flipped.context["table"].rows] == [
        sweep[3],
        sweep[0],
        sweep[2],
        sweep[1],
    ]
    by_lr = _compare(client, team, experiment="sweep", sort="p:lr", order="asc").context["table"]
    assert [row.job for row in by_lr.rows] == [sweep[3], sweep[2], sweep[1], sweep[0]]
    # An unknown column: newest first, as without one.
    unknown = _compare(client, team, experiment="sweep", sort="p:nonsense").context["table"]
    assert [row.job for row in unknown.rows] == sweep[::-1]


def test_only_the_newest_three_are_ticked_and_overlaid_by_default(team, client, sweep):
    client.force_login(team.viewer)
    response = _compare(client, team, experiment="sweep")
    assert response.context["compared_ids"] == {job.pk for job in sweep[1:]}
    (key, lines), *_ = response.context["charts"]
    assert key == "train/loss" and set(lines) == {f"job {j.pk} (sweep)" for j in sweep[1:]}
    page = response.content.decode()
    assert page.count(" checked>") == 3
    chosen = _compare(client, team, experiment="sweep", jobs=[sweep[0].pk, sweep[3].pk])
    assert chosen.context["compared_ids"] == {sweep[0].pk, sweep[3].pk}
    # Sorting keeps the runs ticked.
    assert f"jobs={sweep[0].pk}&amp;jobs={sweep[3].pk}" in chosen.content.decode()


def test_the_table_costs_the_same_queries_for_4_or_20_runs(team, client, sweep):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(team.viewer)
    with CaptureQueriesContext(connection) as few:
        _compare(client, team, experiment="sweep")
    for n in range(16):
        _run(
            team,
            experiment="sweep",
            losses=[3, 2 + n / 100],
            val_losses=[2.5],
            params=_pretrain_params(batch=n + 1),
        )
    with CaptureQueriesContext(connection) as many:
        response = _compare(client, team, experiment="sweep")
    assert len(response.context["table"].rows) == 20
    assert len(many) == len(few)


def test_a_column_of_numbers_and_names_sorts_without_error(team, client):
    runs = [
        _run(team, experiment="mixed", losses=[1.0], params={"width": value})
        for value in (3, "wide", 1, None)
    ]
    client.force_login(team.viewer)
    table = _compare(client, team, experiment="mixed", sort="p:width", order="asc").context["table"]
    assert [row.job for row in table.rows] == [runs[2], runs[0], runs[1], runs[3]]
    column = next(c for c in table.param_columns if c.label == "width")
    assert not column.numeric  # a name among the values: not right-aligned as a number
