"""Reading a job's resources and telling why a group of training processes failed."""

from __future__ import annotations

import pytest

from workers.launch import Resources, rank_failure, require_one_process
from workers.runtime import JobFailed

TORCHRUN_ROOT_CAUSE = """
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
engine FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_18:25:59
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : {exitcode} (pid: 26174)
  error_file: <N/A>
============================================================
"""


def test_resources_default_to_one_process_and_refuse_nonsense():
    assert Resources.from_params({}) == Resources(devices=1, nodes=1, strategy="ddp")
    assert Resources.from_params({"resources": {"devices": 4, "nodes": 2}}).processes == 8
    with pytest.raises(JobFailed, match="resources.devices must be at least 1, got 0"):
        Resources.from_params({"resources": {"devices": 0}})
    with pytest.raises(
        JobFailed, match="resources.strategy must be one of \\['ddp', 'fsdp'\\], got 'tp'"
    ):
        Resources.from_params({"resources": {"strategy": "tp"}})


def test_a_kind_that_trains_on_one_process_refuses_more_devices():
    require_one_process("pretrain", {"resources": {"devices": 2}})
    require_one_process("sft", {"resources": {"devices": 1}})
    with pytest.raises(JobFailed, match="sft jobs train on one process"):
        require_one_process("sft", {"resources": {"devices": 2}})


def test_a_rank_killed_by_a_signal_is_a_retryable_failure(tmp_path):
    log = tmp_path / "ranks.log"
    log.write_text(TORCHRUN_ROOT_CAUSE.format(exitcode=-9))
    failure = rank_failure({}, log, 1)
    assert "rank 1 was killed by SIGKILL" in str(failure) and failure.retryable


def test_a_rank_that_raised_fails_with_its_own_error(tmp_path):
    log = tmp_path / "ranks.log"
    log.write_text(TORCHRUN_ROOT_CAUSE.format(exitcode=1))
    failure = rank_failure({1: "ValueError: shard 3 is damaged"}, log, 1)
    assert str(failure) == "rank 1 failed: ValueError: shard 3 is damaged"
    assert not failure.retryable
