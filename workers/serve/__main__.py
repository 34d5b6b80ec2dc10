"""A serve node: `python -m workers.serve` (docs/architecture.md, "Serving").

    python -m workers.serve --platform-url http://web:8000 --listen 0.0.0.0:8100 \
        --public-url http://serve:8100 --device cpu --capacity 2

Every option may come from the environment instead (SERVE_PLATFORM_URL, SERVE_LISTEN,
SERVE_PUBLIC_URL, SERVE_NODE_NAME, SERVE_DEVICE, SERVE_CAPACITY); the node secret from
SERVE_NODE_SECRET or `<data dir>/serve-node-secret`. The node holds no database
credentials: it learns everything from the platform's sync answers.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import socket
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

from workers.config import ConfigError, env_int, env_str

logger = logging.getLogger("workers.serve")

DEVICES = ("cpu", "cuda")


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _check_url(value: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{value!r} is not an http(s)://host[:port] URL")
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{value!r} has a bad port") from None
    return value.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workers.serve",
        description="A serve node: runs model replicas and their HTTP front.",
    )
    parser.add_argument("--platform-url", help="the platform's base URL (SERVE_PLATFORM_URL)")
    parser.add_argument("--listen", help="host:port of the front (SERVE_LISTEN; 0.0.0.0:8100)")
    parser.add_argument(
        "--public-url",
        help="the front's URL as clients and other nodes reach it "
        "(SERVE_PUBLIC_URL; http://<name>:<port>)",
    )
    parser.add_argument("--name", help="a name unique among nodes (SERVE_NODE_NAME; host name)")
    parser.add_argument("--device", help="cpu or cuda (SERVE_DEVICE; cpu)")
    parser.add_argument("--capacity", help="how many replicas it may hold (SERVE_CAPACITY; 2)")
    parser.add_argument(
        "--gpus",
        help="GPU ids cuda replicas are spread over, one each (SERVE_GPUS; "
        "CUDA_VISIBLE_DEVICES; empty: every replica sees every GPU)",
    )
    parser.add_argument("--replica-command", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)

    def pick(option: str, env_name: str, default: str) -> str:
        value = getattr(args, option)
        if value is not None:
            return value
        try:
            return env_str(env_name, default)
        except ConfigError as exc:
            parser.error(str(exc))

    args.platform_url = pick("platform_url", "SERVE_PLATFORM_URL", "http://127.0.0.1:8000")
    listen = pick("listen", "SERVE_LISTEN", "0.0.0.0:8100")
    args.name = pick("name", "SERVE_NODE_NAME", socket.gethostname())
    args.device = pick("device", "SERVE_DEVICE", "cpu")
    capacity = args.capacity
    try:
        if capacity is None:
            args.capacity = env_int("SERVE_CAPACITY", 2, minimum=1)
        elif not capacity.strip().isdigit() or int(capacity) < 1:
            parser.error(f"--capacity={capacity!r} must be an integer of at least 1")
        else:
            args.capacity = int(capacity)
        args.load_timeout = env_int("SERVE_LOAD_TIMEOUT", 600, minimum=1)
        args.drain_timeout = env_int("SERVE_DRAIN_TIMEOUT", 60, minimum=0)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        args.host, args.port = _parse_listen(listen)
    except ValueError as exc:
        parser.error(f"--listen (SERVE_LISTEN): {exc}")
    try:
        args.platform_url = _check_url(args.platform_url)
    except ValueError as exc:
        parser.error(f"--platform-url (SERVE_PLATFORM_URL): {exc}")
    public_url = pick("public_url", "SERVE_PUBLIC_URL", f"http://{args.name}:{args.port}")
    try:
        args.public_url = _check_url(public_url)
    except ValueError as exc:
        parser.error(f"--public-url (SERVE_PUBLIC_URL): {exc}")
    if args.device not in DEVICES:
        parser.error(f"--device (SERVE_DEVICE)={args.device!r} must be one of {', '.join(DEVICES)}")
    if not args.name.strip():
        parser.error("--name (SERVE_NODE_NAME) must not be empty")
    gpus = pick("gpus", "SERVE_GPUS", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    args.gpus = [gpu.strip() for gpu in gpus.split(",") if gpu.strip()]
    if any(not re.fullmatch(r"[A-Za-z0-9-]+", gpu) for gpu in args.gpus):
        parser.error(f"--gpus (SERVE_GPUS)={gpus!r} must be GPU ids separated by commas")
    if args.replica_command:
        args.replica_command = shlex.split(args.replica_command)
    else:
        args.replica_command = [sys.executable, "-m", "workers.serve.replica"]
        if args.device == "cpu":
            # Replicas share the node's cores: torch's default (all of them) in each
            # would have them fight over every core.
            threads = max(1, (os.cpu_count() or 1) // args.capacity)
            args.replica_command += ["--threads", str(threads)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from workers.serve.front import FrontServer, new_internal_secret
    from workers.serve.node import Node
    from workers.serve.platform_client import PlatformClient
    from workers.serve.secret import serve_node_secret
    from workers.serve.supervisor import Supervisor, SupervisorConfig

    try:
        secret = serve_node_secret()
    except ConfigError as exc:
        print(f"python -m workers.serve: error: {exc}", file=sys.stderr)
        return 2
    internal_secret = new_internal_secret()
    workdir = Path(tempfile.mkdtemp(prefix="cp-serve-"))
    supervisor = Supervisor(
        node_name=args.name,
        command=args.replica_command,
        internal_secret=internal_secret,
        workdir=workdir,
        config=SupervisorConfig(load_timeout=args.load_timeout, drain_timeout=args.drain_timeout),
        gpus=args.gpus,
    )
    node = Node(
        name=args.name,
        public_url=args.public_url,
        device=args.device,
        capacity=args.capacity,
        platform=PlatformClient(args.platform_url, secret),
        supervisor=supervisor,
        node_secret=secret,
    )
    try:
        server = FrontServer((args.host, args.port), node, internal_secret=internal_secret)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    node.start()
    threading.Thread(target=server.serve_forever, name="front", daemon=True).start()
    logger.info(
        "serve node %s (%s, capacity %d) on %s:%d as %s; platform %s",
        args.name,
        args.device,
        args.capacity,
        args.host,
        server.server_address[1],
        args.public_url,
        args.platform_url,
    )
    stop.wait()
    logger.info("stopping: draining replicas")
    node.stop(drain_timeout=args.drain_timeout)
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
