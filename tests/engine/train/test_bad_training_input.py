"""Missing or corrupt shards and a tokenizer that does not fit stop the run with a clear message."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.cli import main
from engine.train.trainer import Trainer, TrainingError


@pytest.fixture
def shards_copy(char_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(char_shards, copy)
    return copy


def test_a_truncated_shard_is_named(make_config, shards_copy):
    shard = shards_copy / "train_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(TrainingError, match=r"train_00001\.bin is corrupt"):
        Trainer(make_config(data={"path": str(shards_copy)}))


def test_a_tampered_shard_fails_the_checksum(make_config, shards_copy):
    shard = shards_copy / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match=r"train_00000\.bin is corrupt: its sha256"):
        Trainer(make_config(data={"path": str(shards_copy), "verify_checksums": True}))


def test_missing_shards_are_named(make_config, tmp_path):
    with pytest.raises(TrainingError, match="no manifest.json"):
        Trainer(make_config(data={"path": str(tmp_path / "nowhere")}))


def test_a_tokenizer_from_other_data_is_refused(make_config, shards_copy):
    tokenizer = json.loads((shards_copy / "tokenizer.json").read_text())
    tokenizer["chars"] = tokenizer["chars"][:-5]
    (shards_copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(TrainingError, match="do not belong together"):
        Trainer(make_config(data={"path": str(shards_copy)}))


def test_a_model_vocabulary_smaller_than_the_data_is_refused(make_config):
    with pytest.raises(TrainingError, match=r"model.vocab_size is 20 but the shards"):
        Trainer(make_config(model={"vocab_size": 20}))


def test_the_command_line_prints_one_error_line_and_exits_2(write_config, tmp_path, capsys):
    config = write_config("run", data={"path": str(tmp_path / "missing")})
    assert main(["train", "pretrain", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no manifest.json" in err
    assert "Traceback" not in err
