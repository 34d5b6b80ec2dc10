"""The train and sample commands, through parsers built the way ``python -m engine`` will."""

from __future__ import annotations

import struct
import zlib

import pytest
import yaml
from vision_helpers import tiny_config_dict

from engine.cli import EngineError, build_parser
from engine.cli import main as engine_main

pytestmark = pytest.mark.slow  # whole flows: make test runs them


def run(argv: list[str]) -> int:
    """The engine's own parser (``python -m engine``); errors raise instead of printing."""
    args = build_parser(argv).parse_args(argv)
    return args.func(args)


def read_png(path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    return width, height, zlib.decompress(data[start : start + length])


@pytest.fixture
def trained_run(tmp_path_factory):
    """A tiny diffusion run and a tiny GAN run trained through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    runs = {}
    for kind in ("diffusion", "gan"):
        config = root / f"{kind}.yaml"
        config.write_text(yaml.safe_dump(tiny_config_dict(kind, root / "unused")))
        runs[kind] = root / f"{kind}-run"
        assert run(["train", kind, str(config), "--out", str(runs[kind])]) == 0
    return runs


def test_train_then_sample_a_prompt(trained_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = run(
        [
            "sample",
            "--checkpoint",
            str(trained_run["diffusion"]),
            "--prompt",
            "a handwritten 7",
            "--n",
            "4",
            "--out",
            str(out),
            "--steps",
            "3",
            "--guidance-scale",
            "3",
            "--scale",
            "1",
        ]
    )
    assert code == 0
    width, height, raw = read_png(out)
    assert (width, height) == (2 * 9 + 1, 2 * 9 + 1)  # 2x2 grid of 8x8 with 1-pixel borders
    assert len(raw) == height * (width + 1)
    assert "4 samples of 'a handwritten 7' from diffusion step 4" in capsys.readouterr().out


def test_sample_without_prompt_draws_every_digit(trained_run, tmp_path):
    out = tmp_path / "all.png"
    assert (
        run(
            [
                "sample",
                "--checkpoint",
                str(trained_run["gan"]),
                "--n",
                "2",
                "--out",
                str(out),
                "--scale",
                "1",
            ]
        )
        == 0
    )
    width, height, _ = read_png(out)
    assert (width, height) == (2 * 9 + 1, 10 * 9 + 1)  # one row per digit


def test_resume_continues_from_the_latest_checkpoint(trained_run, tmp_path, capsys):
    config = tmp_path / "more.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict("gan", tmp_path, train={"steps": 6})))
    assert run(["train", "gan", str(config), "--out", str(trained_run["gan"]), "--resume"]) == 0
    assert "gan: 6 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "a handwritten 12"], "class 12 is outside the trained classes"),
        (["--prompt", "a cat"], "names no digit"),
        (["--guidance-scale", "-1"], "guidance scale must be in"),
        (["--steps", "0"], "sampling steps must be an integer in"),
        (["--steps", "5000"], "sampling steps must be an integer in"),
        (["--n", "0"], "--n must be in"),
        (["--sampler", "ddpm", "--steps", "10"], "runs all 50 steps"),
    ],
)
def test_sample_bad_input_is_a_clear_error(trained_run, tmp_path, extra, message):
    argv = [
        "sample",
        "--checkpoint",
        str(trained_run["diffusion"]),
        "--out",
        str(tmp_path / "x.png"),
    ]
    with pytest.raises(EngineError, match=message):
        run(argv + extra)
    assert not (tmp_path / "x.png").exists()


def test_diffusion_options_on_a_gan_are_refused(trained_run, tmp_path):
    with pytest.raises(
        EngineError, match="only apply to diffusion models; this checkpoint is a gan"
    ):
        run(
            [
                "sample",
                "--checkpoint",
                str(trained_run["gan"]),
                "--guidance-scale",
                "2",
                "--out",
                str(tmp_path / "x.png"),
            ]
        )


def test_main_prints_error_and_exits_2(tmp_path, capsys):
    code = engine_main(["train", "vae", str(tmp_path / "missing.yaml")])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batchsize: 3\n")
    assert engine_main(["train", "vae", str(bad)]) == 2
    assert (
        "unknown key 'train.batchsize' (did you mean 'train.batch_size'?)"
        in capsys.readouterr().err
    )
