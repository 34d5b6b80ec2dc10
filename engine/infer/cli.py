"""``python -m engine generate``: continue prompts with a trained model.

    python -m engine generate --checkpoint var/runs/shakespeare-char --prompt "ROMEO:" \\
        --max-new-tokens 300 --temperature 0.8 --top-k 40 --seed 1 [--stream]
    python -m engine generate --checkpoint var/export/shakespeare --prompt "To be" --prompt "KING:" \\
        --greedy --stop "\\n\\n" --json

``--checkpoint`` takes a run folder (its best checkpoint, else the latest), one checkpoint
folder, or an exported HF GPT-2 folder.
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.cli import EngineError


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate text from a checkpoint")
    parser.add_argument("--checkpoint", required=True, help="run, checkpoint or export folder")
    parser.add_argument(
        "--prompt", action="append", default=[], help="repeat for a batch of prompts"
    )
    parser.add_argument("--prompt-file", help="one prompt per line")
    parser.add_argument("--tokenizer", help="tokenizer file, if the checkpoint has none")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument(
        "--greedy", action="store_true", help="temperature 0: always the most likely token"
    )
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch's default; 1 is often faster on a busy machine)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute every step (for comparison)"
    )
    parser.add_argument(
        "--stream", action="store_true", help="print tokens as they come (one prompt)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_generate)


def _unescape(text: str) -> str:
    # "\n" typed on a shell command line arrives as backslash + n.
    return text.encode("utf-8").decode("unicode_escape") if "\\" in text else text


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.infer.generate import Generator, SamplingError, SamplingParams
    from engine.infer.loading import LoadError, load_for_generation

    prompts = [_unescape(p) for p in args.prompt]
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as handle:
                prompts += [line.rstrip("\n") for line in handle if line.strip()]
        except OSError as error:
            raise EngineError(f"cannot read --prompt-file: {error}") from None
    if not prompts:
        prompts = [""]
    if args.stream and len(prompts) > 1:
        raise EngineError("--stream prints one completion; give a single --prompt")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        params = SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=0.0 if args.greedy else args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            stop=[_unescape(s) for s in args.stop],
            seed=args.seed,
        )
        model, tokenizer = load_for_generation(args.checkpoint, args.tokenizer)
        generator = Generator(model.to(args.device), tokenizer)
        use_cache = not args.no_cache
        if args.stream:
            sys.stdout.write(prompts[0])
            for event in generator.stream(prompts[0], params, use_cache=use_cache):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        result = generator.generate(prompts, params, use_cache=use_cache)
    except (SamplingError, LoadError) as error:
        raise EngineError(str(error)) from None
    if args.json:
        payload = {
            "generations": [
                {
                    "prompt": g.prompt,
                    "text": g.text,
                    "prompt_tokens": g.prompt_tokens,
                    "completion_tokens": g.completion_tokens,
                    "finish_reason": g.finish_reason,
                }
                for g in result.generations
            ],
            "prefill_seconds": result.prefill_seconds,
            "total_seconds": result.total_seconds,
            "tokens_per_second": result.tokens_per_second,
        }
        print(json.dumps(payload, ensure_ascii=False, indent=1))
        return 0
    for generation in result.generations:
        print(generation.prompt + generation.text)
        print("-" * 40)
    print(
        f"{result.completion_tokens} new tokens from {len(result.generations)} prompt(s) in "
        f"{result.total_seconds:.2f} s ({result.tokens_per_second:,.1f} tokens/s, "
        f"prefill {result.prefill_seconds * 1000:.0f} ms)",
        file=sys.stderr,
    )
    return 0
