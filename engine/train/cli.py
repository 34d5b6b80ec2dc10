"""``python -m engine train ...``: pre-train, resume, export, prepare the recipe data.

    python -m engine train prepare-shakespeare var/data/shakespeare-char
    python -m engine train pretrain configs/shakespeare_char.yaml [--resume [CHECKPOINT]] \\
        [--set optim.lr=3e-4 --set train.max_iters=100]
    torchrun --nproc_per_node 2 -m engine train pretrain configs/shakespeare_char.yaml
    torchrun ... -m engine train pretrain run.yaml --report-to relay.sock   # a worker's ranks
    python -m engine train export var/runs/shakespeare-char/checkpoints/step_002000 out/
    python -m engine train plot var/runs/shakespeare-char docs/img/loss.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli import EngineError, add_config_command


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="pre-train a GPT, resume, export")
    commands = parser.add_subparsers(
        dest="command",
        metavar="{pretrain,export,prepare-shakespeare,plot,diffusion,gan,vae,sft,lora,qlora,reward,dpo,ppo}",
    )
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    pretrain = add_config_command(
        commands,
        "pretrain",
        "train a GPT on token shards from a YAML config",
        "YAML file (see configs/)",
        "train.max_iters=100",
    )
    pretrain.add_argument(
        "--report-to",
        metavar="SOCKET",
        help="report the run's hooks to the launcher listening on this Unix socket "
        "(engine/loop/relay.py; what a platform worker passes to its ranks)",
    )
    pretrain.set_defaults(func=cmd_pretrain)

    export = commands.add_parser(
        "export",
        help="write a checkpoint as safetensors + config.json (HF GPT-2, or the engine's own layout)",
    )
    export.add_argument("checkpoint", help="checkpoint folder (…/checkpoints/step_NNNNNN)")
    export.add_argument("out_dir")
    export.set_defaults(func=cmd_export)

    prepare = commands.add_parser(
        "prepare-shakespeare", help="character-level Shakespeare shards for the nanoGPT recipe"
    )
    prepare.add_argument("out_dir", nargs="?", default="var/data/shakespeare-char")
    prepare.set_defaults(func=cmd_prepare)

    plot = commands.add_parser("plot", help="loss curves of a run as a PNG")
    plot.add_argument("run_dir")
    plot.add_argument("out", help="PNG file to write")
    plot.add_argument("--title")
    plot.set_defaults(func=cmd_plot)

    # The image models (engine.vision) train under the same command group.
    from engine.finetune.cli import register_train as register_finetune
    from engine.vision.cli import register_train

    register_train(commands)
    # Post-training (engine.finetune) too.
    register_finetune(commands)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from engine.train.checkpoint import CheckpointError
    from engine.train.config import ConfigError, load_config
    from engine.train.parallelize import barrier, destroy_distributed
    from engine.train.trainer import Trainer, TrainingError

    relay = _relay(args.report_to)
    try:
        try:
            config = load_config(args.config, args.overrides)
            trainer = Trainer(config, resume=args.resume, callbacks=[relay] if relay else None)
        except (ConfigError, TrainingError, CheckpointError) as error:
            raise EngineError(str(error)) from None
        summary = trainer.fit()
        if relay is not None:
            # Said before the group goes: the launcher then knows the run is complete even
            # if tearing the group down crashes a rank (gloo may abort one whose peer
            # closed its connections first).
            if trainer.info.is_main:
                relay.report_summary(_summary_dict(summary))
            relay.report_done()
        # Rank 0 works on alone after the last collective (uploads, the summary): nobody
        # tears the group down before every rank is done.
        barrier(trainer.info)
    except BaseException as error:
        if relay is not None:
            relay.report_error(error)
        raise
    finally:
        destroy_distributed()
        if relay is not None:
            relay.close()
    if trainer.info.is_main:
        val = f"{summary.val_loss:.4f}" if summary.val_loss is not None else "n/a"
        train = f"{summary.train_loss:.4f}" if summary.train_loss is not None else "n/a"
        print(
            f"step {summary.step}: train loss {train}, val loss {val}, "
            f"{summary.tokens_per_second:,.0f} tokens/s, {summary.seconds:.1f} s; "
            f"checkpoint {summary.checkpoint}"
        )
    return 0


def _relay(path: str | None):
    """This rank's connection to the process that launched it (``--report-to``), if any."""
    if not path:
        return None
    import os

    from engine.loop.relay import RelayCallback

    return RelayCallback(path, rank=int(os.environ.get("RANK", "0")))


def _summary_dict(summary) -> dict:
    """A TrainSummary as JSON: what the launcher rebuilds it from."""
    import dataclasses

    data = dataclasses.asdict(summary)
    data["checkpoint"] = str(summary.checkpoint) if summary.checkpoint is not None else None
    return data


def cmd_export(args: argparse.Namespace) -> int:
    from engine.train.checkpoint import CheckpointError
    from engine.train.export import ExportError, export_checkpoint

    try:
        out = export_checkpoint(Path(args.checkpoint), Path(args.out_dir))
    except (CheckpointError, ExportError) as error:
        raise EngineError(str(error)) from None
    print(f"exported to {out}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from engine.data.corpora import CorpusUnavailable
    from engine.train.recipes import prepare_shakespeare_char

    try:
        manifest = prepare_shakespeare_char(args.out_dir)
    except CorpusUnavailable as error:
        raise EngineError(str(error)) from None
    print(
        f"{manifest.root}: vocab {manifest.vocab_size}, train {manifest.num_tokens('train'):,} tokens, "
        f"val {manifest.num_tokens('val'):,} tokens"
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from engine.train.plot import plot_losses

    try:
        out = plot_losses(args.run_dir, args.out, args.title)
    except FileNotFoundError as error:
        raise EngineError(str(error)) from None
    except ImportError:
        raise EngineError("plotting needs matplotlib: pip install matplotlib") from None
    print(f"wrote {out}")
    return 0
