"""The lineage of a dataset as a graph: versions, the jobs that read them, what they made.

    uploaded v1 -> data_pipeline job 3 -> v2 (derived) -> pretrain jobs 4, 7 -> sft job 9

Nodes are laid out in columns by depth (a version's readers one column to its right, a
job's products one further), which is all a lineage of this shape needs to read well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controlplane.datasets.models import Dataset, DatasetVersion
from controlplane.jobs.models import Job


@dataclass
class Node:
    key: str  # "v12" or "j7"
    label: str
    detail: str
    url_kind: str  # "version" or "job" (or another app's kind, with `url` set)
    ident: int
    state: str
    url: str = ""  # where the box links when not a dataset version or job of the dataset
    column: int = 0
    row: int = 0


@dataclass
class Lineage:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)


def dataset_lineage(dataset: Dataset) -> Lineage:
    versions = list(DatasetVersion.objects.filter(dataset=dataset).order_by("number"))
    by_id = {v.pk: v for v in versions}
    readers = Job.objects.filter(
        project_id=dataset.project_id, params__dataset_version_id__in=list(by_id)
    ).order_by("id")
    lineage = Lineage()
    for version in versions:
        origin = (
            "uploaded" if version.produced_by_id is None else f"by job {version.produced_by_id}"
        )
        lineage.nodes[f"v{version.pk}"] = Node(
            f"v{version.pk}", f"v{version.number}", origin, "version", version.number, version.state
        )
        if version.produced_by_id is not None:
            lineage.edges.append((f"j{version.produced_by_id}", f"v{version.pk}"))
    for job in readers:
        lineage.nodes[f"j{job.pk}"] = _job_node(job)
        lineage.edges.append((f"v{job.params['dataset_version_id']}", f"j{job.pk}"))
    # Post-training chains (pretrain -> sft -> dpo): a job that starts from the model of a
    # job shown here follows it, one query per generation.
    parents = [job.pk for job in readers]
    while parents:
        children = Job.objects.filter(
            project_id=dataset.project_id, params__base_job_id__in=parents
        ).order_by("id")
        parents = []
        for job in children:
            if f"j{job.pk}" not in lineage.nodes:
                lineage.nodes[f"j{job.pk}"] = _job_node(job)
                parents.append(job.pk)
            lineage.edges.append((f"j{job.params['base_job_id']}", f"j{job.pk}"))
    # A producing job that reads another dataset (or none) still appears, as a source.
    for source, _target in list(lineage.edges):
        if source.startswith("j") and source not in lineage.nodes:
            job = Job.objects.get(pk=int(source[1:]))
            lineage.nodes[source] = Node(
                source, f"job {job.pk}", job.kind, "job", job.pk, job.state
            )
    layout_lineage(lineage)
    return lineage


def _job_node(job: Job) -> Node:
    detail = job.kind + (f" · {job.experiment}" if job.experiment else "")
    return Node(f"j{job.pk}", f"job {job.pk}", detail, "job", job.pk, job.state)


def layout_lineage(lineage: Lineage) -> None:
    """Columns by depth along the edges, rows in order of appearance within a column."""
    incoming: dict[str, list[str]] = {}
    for source, target in lineage.edges:
        incoming.setdefault(target, []).append(source)

    def depth(key: str, seen: frozenset = frozenset()) -> int:
        parents = [p for p in incoming.get(key, []) if p not in seen]
        return 0 if not parents else 1 + max(depth(p, seen | {key}) for p in parents)

    rows: dict[int, int] = {}
    for node in lineage.nodes.values():
        node.column = depth(node.key)
        node.row = rows.get(node.column, 0)
        rows[node.column] = node.row + 1
