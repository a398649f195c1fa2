"""``reverie serve``: an OpenAI-compatible HTTP server (docs/serve.md)."""

from __future__ import annotations

import argparse
import ipaddress
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible HTTP API (completions, chat, images)",
        description="Serve masked-diffusion LMs (/v1/completions, /v1/chat/completions, with "
        "dynamic batching, streaming and schema-valid JSON output) and image models "
        "(/v1/images/generations) over HTTP. See docs/serve.md.",
    )
    p.add_argument("--model", action="append", required=True, metavar="NAME|FOLDER",
                   help="a bundled model (tiny-json, digits, two-moons, shapes), a model folder, "
                        "or ID=NAME|FOLDER to choose its id; repeatable")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    p.add_argument("--max-batch", type=int, default=32,
                   help="rows (samples) per model call (default 32)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting before the server answers 429 (default 256)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds per request, queueing included (default 60)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="most new tokens per sample (default 256)")
    p.add_argument("--max-n", type=int, default=16, help="most samples per request (default 16)")
    p.add_argument("--max-body", type=int, default=1 << 20,
                   help="largest request body in bytes (default 1 MiB)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0,
                   help="a batch waits while compatible requests keep arriving less than "
                        "this apart (default 20 ms; at most 10 times that)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reverie.serve.app import ServerConfig

    for name in ("max_batch", "max_queue", "max_tokens", "max_n", "max_body"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.timeout <= 0 or args.batch_wait_ms < 0:
        raise ValueError("--timeout must be > 0 and --batch-wait-ms >= 0")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise ValueError(f"reverie serve needs fastapi, uvicorn and prometheus-client ({err}); "
                         "pip install fastapi uvicorn prometheus-client") from None
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if not _loopback(args.host) and args.api_key is None:
        print(f"reverie serve: warning: listening on {args.host} without --api-key: anyone who "
              "can reach this port can use the models", file=sys.stderr)
    from reverie.serve.app import create_app, model_loaders

    loaders = model_loaders(args.model)  # checked now, loaded while the server answers
    config = ServerConfig(
        api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
        timeout=args.timeout, max_tokens=args.max_tokens, max_n=args.max_n,
        max_body=args.max_body, batch_wait=args.batch_wait_ms / 1000,
    )
    import logging

    log = logging.getLogger("reverie.serve")  # "loaded the model ..." and load failures
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("reverie serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    app = create_app({}, config, loading=loaders)
    print(f"reverie serve: loading {', '.join(loaders)}; http://{args.host}:{args.port}/v1 "
          "(GET /health says when they are ready; the playground is at /)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
