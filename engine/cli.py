"""Command line of the engine: ``python -m engine <group> ...``.

Each group lives next to the code it drives and registers its own sub-commands:
``engine.data.cli`` (data pipeline, tokenizers), ``engine.train.cli`` (training),
``engine.infer.cli`` (text generation), ``engine.vision.cli`` (image sampling) and
``engine.evaluate.cli`` (a model's evaluation). Groups are imported lazily so that ``--help`` on one
does not pay for importing torch in another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# group name -> module with `register(subparsers)`; the module's commands set `func`.
GROUPS = {
    "data": "engine.data.cli",
    "train": "engine.train.cli",
    "generate": "engine.infer.cli",
    "sample": "engine.vision.cli",
    "evaluate": "engine.evaluate.cli",
}


class EngineError(Exception):
    """An error the user can act on: printed as one line, exit status 2, no traceback."""


def add_config_command(
    subparsers, name: str, help_text: str, config_help: str, set_example: str
) -> argparse.ArgumentParser:
    """A training command that reads a YAML config: ``config``, ``--resume``, ``--set``."""
    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("config", help=config_help)
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the run's latest checkpoint (or the given one)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {set_example}",
    )
    return parser


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", metavar="{" + ",".join(GROUPS) + "}")
    wanted = argv[0] if argv and argv[0] in GROUPS else None
    for name, module_name in GROUPS.items():
        if wanted is not None and name != wanted:
            sub.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
