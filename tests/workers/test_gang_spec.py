"""A multi-node attempt's node tasks: the gang block of a JobSpec on the wire."""

from __future__ import annotations

import dataclasses

import pytest

from workers.protocol import JobKind, JobSpec, ProtocolError

SPEC = JobSpec(
    job_id=7,
    kind=JobKind.PRETRAIN,
    project_id=1,
    attempt=2,
    inputs=(),
    params={"resources": {"nodes": 2, "devices": 8}},
    output_prefix="projects/1/jobs/7/attempt-2/",
    heartbeat_seconds=20.0,
)


def test_a_node_task_carries_its_place_in_the_gang():
    node = dataclasses.replace(SPEC, gang={"nodes": 2, "member": 1, "timeout_seconds": 600.0})
    assert JobSpec.from_dict(node.to_dict()) == node
    assert "gang" not in SPEC.to_dict()  # an older worker still takes one-node jobs


@pytest.mark.parametrize(
    "gang, message",
    [
        ({"nodes": 2, "member": 2, "timeout_seconds": 60}, "member 2 of 2 nodes"),
        ({"nodes": 1, "member": 0, "timeout_seconds": 60}, "member 0 of 1 nodes"),
        ({"nodes": 2, "member": 0}, "missing timeout_seconds"),
    ],
)
def test_an_impossible_gang_is_refused(gang, message):
    with pytest.raises(ProtocolError, match=message):
        JobSpec.from_dict({**SPEC.to_dict(), "gang": gang})
