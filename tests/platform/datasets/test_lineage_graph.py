"""The lineage graph fits its box (the viewBox is the whole graph, drawn no larger than its
natural size), carries the pan/zoom controls its script drives, and links every node."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from controlplane.datasets.lineage import Lineage, Node, layout_lineage

STATIC = Path(__file__).resolve().parents[3] / "static"


def _chain(length: int) -> Lineage:
    """v1 -> job 10 -> v2 -> job 11 -> ... : a long chain, wider than any page."""
    lineage = Lineage()
    previous = None
    for n in range(length):
        if n % 2 == 0:
            node = Node(f"v{n}", f"v{n // 2 + 1}", "uploaded", "version", n // 2 + 1, "ready")
        else:
            node = Node(f"j{n}", f"job {10 + n}", "data_pipeline", "job", 10 + n, "succeeded")
        lineage.nodes[node.key] = node
        if previous:
            lineage.edges.append((previous, node.key))
        previous = node.key
    layout_lineage(lineage)
    return lineage


def _render(lineage: Lineage) -> str:
    from controlplane.datasets.templatetags.lineage_graph import lineage_svg

    return lineage_svg(lineage, SimpleNamespace(pk=3), SimpleNamespace(pk=5))


def test_a_long_lineage_fits_its_box_whole():
    html = _render(_chain(12))
    view_box = re.search(r'viewBox="0 0 (\d+) (\d+)"', html)
    width, height = int(view_box[1]), int(view_box[2])
    # The whole graph is in the viewBox (12 columns of boxes), at its natural size, which
    # the stylesheet caps at the box's width (max-width: 100%; height: auto).
    assert width > 12 * 170 and f'width="{width}" height="{height}"' in html
    assert 'preserveAspectRatio="xMidYMid meet"' in html
    css = (STATIC / "css" / "app.css").read_text()
    assert re.search(r"svg\.lineage \{[^}]*max-width: 100%;[^}]*height: auto;", css)


def test_the_graph_has_controls_keyboard_focus_and_its_script():
    html = _render(_chain(3))
    # Shown by the script (hidden without it: buttons that do nothing would mislead).
    assert '<div class="lineage-controls" hidden>' in html
    for action, name in (("in", "Zoom in"), ("out", "Zoom out")):
        assert f'data-lineage-zoom="{action}" aria-label="{name}"' in html
    assert 'data-lineage-zoom="fit">Fit</button>' in html
    assert 'tabindex="0"' in html and "arrow keys pan, + and - zoom, 0 fits" in html
    assert '<script src="/static/js/lineage.js" defer></script>' in html
    script = (STATIC / "js" / "lineage.js").read_text()
    for handled in ('"wheel"', '"pointerdown"', '"keydown"', "ArrowLeft", '"focusin"'):
        assert handled in script


def test_every_node_links_to_its_page_with_a_name():
    html = _render(_chain(3))
    links = re.findall(r'<a href="([^"]+)" class="node"><title>([^<]+)</title>', html)
    assert links == [
        ("/projects/3/datasets/5/v1/", "v1, uploaded, ready"),
        ("/projects/3/jobs/11/", "job 11, data_pipeline, succeeded"),
        ("/projects/3/datasets/5/v2/", "v2, uploaded, ready"),
    ]
    assert html.count('class="edge"') == 2


def test_two_graphs_on_a_page_do_not_share_an_arrowhead_id():
    first, second = _render(_chain(3)), _render(_chain(5))
    ids = [re.search(r'<marker id="([^"]+)"', html)[1] for html in (first, second)]
    assert ids[0] != ids[1] and f"url(#{ids[0]})" in first


@pytest.mark.django_db
def test_the_dataset_page_draws_the_graph_with_links(team, client, make_ready_version):
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.models import Job

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )
    version = make_ready_version(dataset, team.engineer, {"a.txt": b"to be"})
    reader = Job.objects.create(
        project=team.project,
        kind="data_pipeline",
        params={"dataset_version_id": version.pk},
        created_by=team.engineer,
    )
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/datasets/{dataset.pk}/").content.decode()
    graph = page[page.index('<div class="lineage-view"') :]
    assert f'href="/projects/{team.project.pk}/datasets/{dataset.pk}/v1/"' in graph
    assert f'href="/projects/{team.project.pk}/jobs/{reader.pk}/"' in graph
