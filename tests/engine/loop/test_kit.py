"""The loop kit on its own: callbacks, checkpoint stores, device choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.loop.callbacks import Callback, CallbackList
from engine.loop.checkpoints import StepFiles
from engine.loop.device import pick_device, pick_dtype
from engine.loop.metrics import JsonlMetrics
from tests.engine.recording_callback import Recorder


class _Asked(Callback):
    def __init__(self, answer: bool):
        self.answer, self.asked = answer, 0

    def should_stop(self):
        self.asked += 1
        return self.answer


def test_every_callback_is_asked_and_one_yes_stops():
    first, second = _Asked(True), _Asked(False)
    hooks = CallbackList([first, second])
    assert hooks.should_stop() and first.asked == second.asked == 1
    assert not CallbackList([_Asked(False)]).should_stop()


def test_every_callback_hears_each_hook_in_order(tmp_path):
    recorder = Recorder()
    hooks = CallbackList([JsonlMetrics(tmp_path / "metrics.jsonl"), recorder])
    hooks.metrics(3, {"train/loss": 1.5})
    (tmp_path / "step_000003.pt").write_bytes(b"")  # the recorder checks it exists
    hooks.checkpoint(3, tmp_path / "step_000003.pt", None)
    assert recorder.metrics == [(3, {"train/loss": 1.5})]
    assert recorder.checkpoints == [(3, tmp_path / "step_000003.pt")]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 3, "train/loss": 1.5}\n'


class _Toy(StepFiles):
    format = "test.toy/1"
    description = "a toy checkpoint"
    error = ValueError


def test_step_files_keep_the_last_k_and_load_by_run_folder(tmp_path):
    store = _Toy(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        store.save(step, {"value": torch.tensor(step)})
    assert store.steps() == [2, 3] and store.latest() == store.path_for(3)
    assert int(_Toy.load(tmp_path)["value"]) == 3  # a run folder means its latest
    (store.dir / ".step_000004.pt.tmp").write_bytes(b"half")  # a writer that died
    assert store.steps() == [2, 3]


def test_step_files_refuse_another_format(tmp_path):
    class Other(_Toy):
        format = "test.other/1"

    path = Other(tmp_path).save(1, {})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is not a toy checkpoint"):
        _Toy.load(path)
    with pytest.raises(ValueError, match="holds no checkpoints"):
        _Toy.load(empty)


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(KeyError, match="no CUDA device"):
        pick_device("cuda", KeyError)
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("float16", torch.device("cpu")) == torch.float16


def test_the_folder_checkpointer_shares_the_interface(tmp_path):
    from engine.train.checkpoint import Checkpointer

    store = Checkpointer(tmp_path, keep_last=1)
    (store.path_for(5)).mkdir(parents=True)  # no meta.json: incomplete, never picked up
    assert store.steps() == [] and store.latest() is None
    assert store.path_for(5) == Path(tmp_path) / "checkpoints" / "step_000005"
