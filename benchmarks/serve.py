"""Throughput and latency of `aigc serve` under concurrent streaming clients, batched against unbatched.

The server as built (continuous batching, ``--max-batch 64``) and the same server with batching off
(``--max-batch 1``) are started in turn on the same run. For each number of concurrent clients, every
client sends fixed prompts (Python function headers) one after another until the fixed number of
requests is done; each request streams ``--tokens`` tokens (``ignore_eos``, so every answer has the
same length). Reported per row: requests/s, output tokens/s, and p50/p99 of time to first token,
inter-token latency and end-to-end latency, measured by the clients.

    python benchmarks/serve.py [--run runs/code] [--requests 64] [--tokens 64] [--clients 1 4 16 64]

Without the run directory it is trained first with the default recipe (`aigc run`, about 3 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPTS = ["def parse_args(argv):", "class Config:", "def read_file(path):", "import os\n\ndef main():",
           "def fibonacci(n):", "def __init__(self, name):", "for line in lines:", "def test_parser():"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "aigc", "serve", str(run), "--port", str(port), "--max-batch",
                                str(max_batch), "--max-waiting", "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    sys.exit("the server did not start")


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, tokens: int, seed: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "stream": True, "ignore_eos": True,
            "temperature": 0.8, "seed": seed, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    arrivals, produced = [], 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                arrivals.append(time.perf_counter())
            if chunk.get("usage"):
                produced = chunk["usage"]["completion_tokens"]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"ttft": arrivals[0] - started, "gaps": gaps, "e2e": time.perf_counter() - started, "tokens": produced}


async def load(url: str, model: str, clients: int, requests: int, tokens: int) -> dict:
    queue = list(range(requests))
    results: list[dict] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            results.append(await one_request(client, url, model, PROMPTS[i % len(PROMPTS)], tokens, i))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        seconds = time.perf_counter() - started
    gaps = [g for r in results for g in r["gaps"]]
    return {"rps": len(results) / seconds, "tps": sum(r["tokens"] for r in results) / seconds,
            "ttft": [r["ttft"] for r in results], "itl": gaps, "e2e": [r["e2e"] for r in results]}


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/code"))
    parser.add_argument("--requests", type=int, default=64, help="requests per row")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()
    if not (args.run / "checkpoints" / "latest").exists():
        print(f"{args.run} has no checkpoint: training it with `aigc run` (the default code recipe)", flush=True)
        subprocess.run([sys.executable, "-m", "aigc", "run", f"run.dir={args.run}"], check=True, stdout=subprocess.DEVNULL)
    model = args.run.resolve().name
    rows = []
    for label, max_batch in (("batched (64)", 64), ("batch size 1", 1)):
        process, url = start_server(args.run, max_batch)
        try:
            asyncio.run(load(url, model, 1, 4, 8))  # warm-up
            for clients in args.clients:
                result = asyncio.run(load(url, model, clients, args.requests, args.tokens))
                rows.append((label, clients, result))
                print(f"  {label}, {clients} clients: {result['tps']:,.0f} tokens/s", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    ms = 1000.0
    print(f"\nmodel {model}: {args.requests} requests per row, {args.tokens} streamed tokens each\n")
    print("| server        | clients |  req/s | out tok/s | TTFT p50/p99 ms | ITL p50/p99 ms | E2E p50/p99 ms |")
    print("|---------------|--------:|-------:|----------:|----------------:|---------------:|---------------:|")
    for label, clients, r in rows:
        print(f"| {label:<13} | {clients:>7} | {r['rps']:>6.2f} | {r['tps']:>9,.0f} | "
              f"{pct(r['ttft'], 50) * ms:>6.0f} / {pct(r['ttft'], 99) * ms:>6.0f} | "
              f"{pct(r['itl'], 50) * ms:>5.1f} / {pct(r['itl'], 99) * ms:>6.1f} | "
              f"{pct(r['e2e'], 50) * ms:>6.0f} / {pct(r['e2e'], 99) * ms:>6.0f} |")
    batched = {c: r for label, c, r in rows if label.startswith("batched")}
    single = {c: r for label, c, r in rows if label.startswith("batch size 1")}
    if 16 in batched and 16 in single:
        ratio = batched[16]["tps"] / single[16]["tps"]
        p99 = pct(batched[16]["ttft"], 99)
        print(f"\nat 16 clients: {ratio:.1f}x the output tokens/s of batch size 1 (target >= 6x: "
              f"{'PASS' if ratio >= 6 else 'FAIL'}); p99 time to first token {p99 * ms:.0f} ms "
              f"(target < 1000 ms: {'PASS' if p99 < 1 else 'FAIL'})")


if __name__ == "__main__":
    main()
