"""``reverie serve`` under load: C concurrent clients against tiny-json on loopback.

The server runs in a subprocess (``python -m reverie serve --model tiny-json``, the defaults
a user gets but ``--max-queue``, raised so that no request is refused by design); for each
C in ``--clients`` (default 1, 4, 16, 64) C asyncio clients send ``--requests`` completions
in all (closed loop: each sends its next request when its last one is answered; prompts of
four lengths in turn, so batches are ragged; ``max_tokens`` 32, one seed per request). The
levels run in ``--rounds`` interleaved rounds (the machine's load drifts). The
server and the no-server measurement below use the same torch threads.
Reported: throughput (requests/s and completion tokens/s), its ratio to one client, p50 /
p99 latency, the rows per model call (mean and histogram, read from the server's
``/metrics``), failed (an answer other than 200) and lost (no answer) requests. Targets: at
16 clients at least 3x the throughput of one client; no request lost at 64. For scale, the
rows/s of ``generate`` alone (no server) at the same batch sizes: the ratio batching can reach
at best on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reverie.bench.common import format_table

PROMPTS = ['{"name":', "{", '{"age":', '{"city":"']


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", default="1,4,16,64", help="concurrency levels (comma list)")
    p.add_argument("--requests", type=int, default=128, help="requests per level")
    p.add_argument("--rounds", type=int, default=2,
                   help="the levels run this many times in turn, the requests shared out")
    p.add_argument("--max-tokens", type=int, default=32, help="new tokens per request")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the server and of the no-server measurement "
                        "(default: this process's, e.g. OMP_NUM_THREADS)")
    p.add_argument("--model", default="tiny-json", help="the served model")
    p.add_argument("--server-arg", action="append", default=[],
                   help="an extra `reverie serve` argument (repeatable, e.g. --max-batch=16)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    src = Path(__file__).resolve().parents[2]  # this checkout's reverie, not another one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH",
                                                                                    "")])}
    threads = ["--threads", str(args.threads)]
    cmd = [sys.executable, "-m", "reverie", "serve", "--model", args.model, "--port", str(port),
           "--max-queue", "100000", "--log-level", "warning", *threads, *args.server_arg]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def _histogram(url: str) -> dict[str, float]:
    """The cumulative buckets, sum and count of ``reverie_batch_rows``."""
    import httpx

    text = httpx.get(url + "/metrics").text
    out = {le: float(v) for le, v in
           re.findall(r'reverie_batch_rows_bucket\{le="([^"]+)"\} (\S+)', text)}
    for part in ("sum", "count"):
        m = re.search(rf"reverie_batch_rows_{part} (\S+)", text)
        out[part] = float(m.group(1)) if m else 0.0
    return out


async def _level(url: str, model: str, clients: int, n: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    tokens = [0]
    failed = [0]
    lost = [0]
    todo = iter(range(n))

    async def client(c: httpx.AsyncClient) -> None:
        for i in todo:
            body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)],
                    "max_tokens": max_tokens, "seed": i}
            t0 = time.perf_counter()
            try:
                r = await c.post(url + "/v1/completions", json=body)
            except httpx.HTTPError:
                lost[0] += 1
                continue
            if r.status_code != 200:
                failed[0] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            tokens[0] += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*[client(c) for _ in range(clients)])
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "tokens": tokens[0], "failed": failed[0], "lost": lost[0],
            "seconds": wall}


def _calls(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Model calls per rows bucket (not cumulative) between two ``_histogram`` reads."""
    prev, out = 0.0, {}
    for le in [k for k in after if k not in ("sum", "count")]:
        cum = after[le] - before.get(le, 0.0)
        out[le.replace(".0", "")] = cum - prev
        prev = cum
    out["sum"] = after["sum"] - before["sum"]
    out["count"] = after["count"] - before["count"]
    return out


def _summary(clients: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's numbers over its rounds."""
    lat = sorted(x for p in parts for x in p["latencies"])
    wall = sum(p["seconds"] for p in parts)
    calls: dict[str, float] = {}
    for p in parts:
        for k, v in p["calls"].items():
            calls[k] = calls.get(k, 0.0) + v

    def pct(q: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    hist = {k: int(v) for k, v in calls.items() if k not in ("sum", "count") and v}
    return {"clients": clients, "requests": sum(p["n"] for p in parts), "ok": len(lat),
            "failed": sum(p["failed"] for p in parts), "lost": sum(p["lost"] for p in parts),
            "seconds": wall, "req_per_s": len(lat) / wall,
            "tokens_per_s": sum(p["tokens"] for p in parts) / wall, "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), "model_calls": calls["count"],
            "mean_batch_rows": calls["sum"] / max(calls["count"], 1),
            "batch_rows_histogram": hist}


def _engine(model_name: str, max_tokens: int, sizes: list[int]) -> dict[int, float]:
    """Rows per second of :func:`reverie.discrete.generate` alone (no server) at batch sizes
    ``sizes``, with the server's settings: the ceiling the server's ratios can reach."""
    import torch

    from reverie.discrete import generate, load_model
    from reverie.discrete.generate import end_token_id
    from reverie.serve.app import TEXT_SAMPLER

    model = load_model(model_name)
    out = {}
    for b in sizes:
        prompts = [torch.tensor(model.encode(PROMPTS[i % len(PROMPTS)])) for i in range(b)]
        rows, t0 = 0, time.perf_counter()
        while rows < 4 * b or time.perf_counter() - t0 < 2:  # at least 2 s and 4 calls
            gens = [torch.Generator().manual_seed(rows + i) for i in range(b)]
            generate(model, prompt=prompts, max_new_tokens=max_tokens, sampler=TEXT_SAMPLER,
                     generator=gens, eos_id=end_token_id(model))
            rows += b
        out[b] = rows / (time.perf_counter() - t0)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from reverie.bench.common import machine
    from reverie.serve.app import ServerConfig

    levels = [int(c) for c in args.clients.split(",")]
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    proc, url = _start(args)
    parts: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
    try:
        asyncio.run(_level(url, args.model, 4, 8, args.max_tokens))  # warm-up
        for r in range(args.rounds):  # levels interleaved: the machine's load drifts
            for c in levels:
                n = args.requests // args.rounds + (r < args.requests % args.rounds)
                before = _histogram(url)
                res = asyncio.run(_level(url, args.model, c, n, args.max_tokens))
                res["calls"] = _calls(before, _histogram(url))
                res["n"] = n
                parts[c].append(res)
                print(f"  round {r + 1}, {c} clients: {len(res['latencies']) / res['seconds']:.1f}"
                      " req/s", flush=True)
        rows = [_summary(c, parts[c]) for c in levels]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    sizes = sorted({1, *[min(c, ServerConfig.max_batch) for c in levels]})
    engine = _engine(args.model, args.max_tokens, sizes)
    base = rows[0]["req_per_s"] if rows and levels[0] == 1 else float("nan")
    for r in rows:
        r["speedup"] = r["req_per_s"] / base
    table = format_table(
        ["clients", "requests", "ok", "failed", "lost", "req/s", "x 1 client", "tokens/s",
         "p50 ms", "p99 ms", "rows/call", "rows per call: calls"],
        [[r["clients"], r["requests"], r["ok"], r["failed"], r["lost"], r["req_per_s"],
          r["speedup"], r["tokens_per_s"], r["p50_ms"], r["p99_ms"], r["mean_batch_rows"],
          ", ".join(f"<={k}: {v}" for k, v in r["batch_rows_histogram"].items())]
         for r in rows])
    print(f"\nreverie serve, {args.model}, max_tokens {args.max_tokens}, "
          f"{args.requests} requests per level; {machine()}\n")
    print(table)
    print("\ngenerate alone (no server), rows/s at batch size: " + ", ".join(
        f"{b}: {v:.1f} ({v / engine[1]:.2f}x)" for b, v in engine.items()))
    by = {r["clients"]: r for r in rows}
    targets = {}
    if 16 in by and 1 in by:
        targets["16_clients_at_least_3x"] = bool(by[16]["speedup"] >= 3)
    if 64 in by:
        targets["none_lost_at_64"] = by[64]["lost"] == 0 and by[64]["failed"] == 0
    print(f"\ntargets: {targets}")
    return {"model": args.model, "max_tokens": args.max_tokens, "requests": args.requests,
            "rounds": args.rounds,
            "server_threads": args.threads, "server_args": args.server_arg, "levels": rows,
            "engine_rows_per_s": engine, "targets": targets}

