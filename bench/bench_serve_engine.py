"""Serving engine (continuous batching) on CPU: one client, 16 concurrent clients, TTFT, overhead.

    .venv/bin/python bench/bench_serve_engine.py             # the figures of docs/engine-serving.md
    .venv/bin/python bench/bench_serve_engine.py --quick     # fewer rounds
    .venv/bin/python bench/bench_serve_engine.py --profile   # + cProfile of 16 requests' decode

Model: 6 layers, 6 heads, 384 wide, context 512 (nanoGPT's Shakespeare-char size), random
weights (speed does not depend on them), the Shakespeare character tokenizer. Every request
is greedy with 128 new tokens and no early stop; prompts are different Hamlet passages of
about 64 tokens. Clients are threads of this process calling ``TextEngine.submit`` (no HTTP).

(a) one client, requests one after another: tokens/s and latency (submit -> last token);
(b) 16 clients at once, each sending requests one after another: total tokens/s (goal >= 4x
    one client's) and p95 latency (goal < 3x one client's);
(c) time to first token (streaming) of a 64-token prompt, idle and while 15 others decode
    (goal < 100 ms);
(d) the engine's overhead over a bare ``Generator.generate`` of the same request.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer  # noqa: E402
from engine.infer.generate import Generator  # noqa: E402
from engine.models.gpt import GPT, GPTConfig  # noqa: E402
from engine.serve import CompletionParams, TextEngine  # noqa: E402
from engine.train.recipes import shakespeare_texts  # noqa: E402

NEW_TOKENS = 128
PROMPT_TOKENS = 64


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def params() -> CompletionParams:
    return CompletionParams(max_tokens=NEW_TOKENS, temperature=0.0, stop_at_eot=False)


def one_request(engine: TextEngine, prompt: str) -> tuple[float, float]:
    """(latency, time to first token) of one streamed request."""
    started = time.perf_counter()
    request = engine.submit(prompt, params())
    first = None
    for _delta in request:
        if first is None:
            first = time.perf_counter() - started
    result = request.result()
    assert result.completion_tokens == NEW_TOKENS
    return time.perf_counter() - started, first or 0.0


def clients(engine: TextEngine, prompts: list[str], rounds: int) -> tuple[float, list[float]]:
    """Each prompt is one client sending ``rounds`` requests; (wall seconds, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(prompts) + 1)

    def client(prompt: str) -> None:
        barrier.wait()
        for _ in range(rounds):
            latency, _ = one_request(engine, prompt)
            with lock:
                latencies.append(latency)

    threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0 = torch's default); 1 by default: on a shared 2-core machine "
        "two OpenMP threads that spin-wait for each other slow every op down many times",
    )
    parser.add_argument(
        "--profile", action="store_true", help="then cProfile 16 requests decoded together"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else 3
    singles = 3 if args.quick else 5

    texts = shakespeare_texts()
    tokenizer = CharTokenizer.train(texts.values(), special_tokens=DEFAULT_SPECIAL_TOKENS)
    hamlet = texts["hamlet_gut"]
    prompts = [
        hamlet[20_000 * (i + 1) : 20_000 * (i + 1) + PROMPT_TOKENS] for i in range(args.clients)
    ]
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=512, n_layer=6, n_head=6, n_embd=384, bias=False
    )
    model = GPT(config).eval()
    generator = Generator(model, tokenizer)
    engine = TextEngine(model, tokenizer, max_batch=32, max_queue=64).start()
    # Rounds of: one client (streamed), the bare generator against a non-streamed engine
    # request, N clients at once, TTFT under load. The machine is shared: other load only
    # ever slows a run down, so each figure is its best round, and each ratio is the median
    # of the rounds' own ratios (single and concurrent runs of one round are neighbours).
    single_latency = bare = plain = p50 = p95 = float("inf")
    concurrent_rate = 0.0
    rate_ratios, latency_ratios = [], []
    idle_first, loaded_first = [], []
    try:
        for prompt in prompts[:2]:  # warm-up
            one_request(engine, prompt)
        generator.generate(prompts[0], params().sampling())
        for _round in range(rounds):
            engine_runs, bare_runs, plain_runs = [], [], []
            for i in range(singles):
                prompt = prompts[i % len(prompts)]
                latency, first = one_request(engine, prompt)
                engine_runs.append(latency)
                idle_first.append(first)
                started = time.perf_counter()
                generator.generate(prompt, params().sampling())
                bare_runs.append(time.perf_counter() - started)
                started = time.perf_counter()
                engine.complete(prompt, params())
                plain_runs.append(time.perf_counter() - started)
            round_single = statistics.median(engine_runs)
            single_latency = min(single_latency, round_single)
            # The fastest run of each is the one least disturbed by other load.
            bare = min(bare, *bare_runs)
            plain = min(plain, *plain_runs)

            wall, latencies = clients(engine, prompts, 1)
            round_rate = len(latencies) * NEW_TOKENS / wall
            concurrent_rate = max(concurrent_rate, round_rate)
            p50 = min(p50, percentile(latencies, 50))
            p95 = min(p95, percentile(latencies, 95))
            rate_ratios.append(round_rate / (NEW_TOKENS / round_single))
            latency_ratios.append(percentile(latencies, 95) / round_single)

            busy = [engine.submit(p, params()) for p in prompts[1:]]
            while not all(r.first_token for r in busy):  # their prefill is over: decoding
                time.sleep(0.005)
            _, first = one_request(engine, prompts[0])
            loaded_first.append(first)
            for request in busy:
                request.result()
    finally:
        engine.stop()
    single_rate = NEW_TOKENS / single_latency
    total_rate = concurrent_rate

    print(
        f"model: 6 layers, 384 wide, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"params, context 512, vocab {config.vocab_size}; greedy {NEW_TOKENS} new tokens, "
        f"{PROMPT_TOKENS}-token prompts; {torch.get_num_threads()} torch threads"
    )
    print(
        f"(a) 1 client:   {single_rate:7.1f} tokens/s, latency p50 {single_latency * 1000:.0f} ms"
    )
    print(
        f"(b) {args.clients} clients: {total_rate:7.1f} tokens/s total, latency p50 "
        f"{p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (best of {rounds} rounds of "
        f"{args.clients} requests)"
    )
    print(
        f"    ratio tokens/s {statistics.median(rate_ratios):.1f}x (goal >= 4x); p95 / single "
        f"latency {statistics.median(latency_ratios):.2f}x (goal < 3x); median of the rounds' "
        f"own ratios"
    )
    print(
        f"(c) time to first token, {PROMPT_TOKENS}-token prompt: idle p50 "
        f"{statistics.median(idle_first) * 1000:.1f} ms, with {len(prompts) - 1} others decoding "
        f"p50 {statistics.median(loaded_first) * 1000:.1f} ms (goal < 100 ms)"
    )
    print(
        f"(d) bare Generator.generate {bare * 1000:.0f} ms vs the engine, not streamed, "
        f"{plain * 1000:.0f} ms (streamed {single_latency * 1000:.0f} ms): overhead "
        f"{(plain - bare) * 1000:+.1f} ms per request ({(plain / bare - 1) * 100:+.1f}%; fastest "
        f"run of each)"
    )
    if args.profile:
        # cProfile sees only its own thread: the same 16 requests, stepped in this one.
        stepped = TextEngine(model, tokenizer, max_batch=32).start(thread=False)
        for prompt in prompts:
            stepped.submit(prompt, params())
        profiler = cProfile.Profile()
        profiler.enable()
        while stepped.step():
            pass
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
