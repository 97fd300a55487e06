"""What tracing costs per request: off (the default) against on, in the same run.

``python -m bench tracing [--requests 2000 --blocks 8 --quick]``

1. **The off path, alone.** What tracing-off adds to a request: ``Tracing.begin`` and the
   seven calls on the shared no-op trace that the pipeline makes, timed over many
   requests (the loop's own time subtracted), and the memory blocks they allocate
   (``sys.getallocatedblocks``, collector off). Also the check of a client's
   ``traceparent`` header, paid only by requests that bring one.
2. **The request path, CPU per request.** Three gateways' services in one process, each
   with the real pipeline (local quotas with limits, metrics, no ledger, no access log)
   over a ``MockTransport`` engine that answers at once: tracing **off**, **on** with the
   SDK's in-memory exporter (the spans and the batch processor) and **on_otlp**, which
   exports over OTLP/HTTP to a collector stub in a child process (adding protobuf
   encoding and the HTTP posts, on the exporter's thread). Unary and streaming requests
   (5 chunks) run in blocks of ``--requests``, ABBA across the modes; a block's figure is
   the process's CPU time (every thread) over its requests, the span export flushed
   inside the block. Reported: the median block per mode and its difference to off.

The absolute figures are this in-process harness's, not a served gateway's (no sockets,
no HTTP server); the differences are what tracing adds. Results:
``bench/results/tracing.{md,json}`` (``--quick``: ``bench/results/quick/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench import machine, results
from bench.markdown import num, table
from gateway.app import build_services
from gateway.config import Settings
from gateway.protocol import Endpoint
from gateway.request.context import RequestContext
from gateway.request.tracing import NullTracing, incoming_traceparent
from gateway.services import Services
from gateway.upstream.mock import MockReply, MockRequest, MockTransport
from tests.support import CLIENT_KEY, EngineSpec, free_port, gateway_config, wait_http

MODES = ("off", "on", "on_otlp", "on_otlp_10pct")
AUTH = f"Bearer {CLIENT_KEY}"
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MSGS = [{"role": "user", "content": "hello there"}]
UNARY = orjson.dumps({"model": "small", "messages": MSGS, "max_tokens": 5})
STREAM = orjson.dumps({"model": "small", "messages": MSGS, "max_tokens": 5, "stream": True})
USAGE = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
ANSWER = MockReply.json(
    {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": USAGE,
    }
)
CHUNKS = MockReply.sse(
    [{"choices": [{"index": 0, "delta": {"content": f" t{i}"}}]} for i in range(5)]
    + [{"choices": [], "usage": USAGE}]
)

#: A collector stub: answers every OTLP/HTTP POST with 200 and counts them (GET).
SINK = """
import http.server, sys
posts = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global posts
        self.rfile.read(int(self.headers.get("content-length", 0)))
        posts += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def do_GET(self):
        body = str(posts).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


# ---------------------------------------------------------------- 1. the off path


def null_path(n: int) -> dict[str, float]:
    """ns and allocated blocks per request of tracing-off's calls, as the pipeline makes them."""
    tracing = NullTracing()
    ctx = RequestContext(request_id="r", endpoint=Endpoint.CHAT)

    def calls() -> None:
        for _ in range(n):
            ctx.trace = trace = tracing.begin(ctx)
            trace.enter("authenticate")
            trace.enter("admit")
            ctx.trace.enter("route")
            ctx.trace.enter("forward")
            ctx.trace.enter("settle")
            ctx.trace.enter("record")
            ctx.trace.close()

    def empty() -> None:
        for _ in range(n):
            pass

    def timed(fn: Any) -> float:
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter_ns()
            fn()
            best = min(best, time.perf_counter_ns() - t)
        return best

    def check() -> None:
        for _ in range(n):
            incoming_traceparent(TRACEPARENT)

    gc.collect()
    gc.disable()
    try:
        calls()  # warm
        before = sys.getallocatedblocks()
        calls()
        blocks = sys.getallocatedblocks() - before
        loop_ns = timed(empty)
        calls_ns = timed(calls)
        check_ns = timed(check)
    finally:
        gc.enable()
    return {
        "requests": n,
        "calls_ns_per_request": (calls_ns - loop_ns) / n,
        "allocated_blocks_per_request": blocks / n,
        "traceparent_check_ns": (check_ns - loop_ns) / n,
    }


# ---------------------------------------------------------------- 2. the request path


@contextlib.contextmanager
def collector() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/", 10)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


def _answer(request: MockRequest) -> MockReply:
    return CHUNKS if request.stream else ANSWER


@contextlib.asynccontextmanager
async def gateways(tmp: Path, collector_url: str) -> AsyncIterator[dict[str, Services]]:
    specs = [EngineSpec("small-0", "http://small-0", "small", "model-small")]
    limits = {"rpm": 10**9, "tpm": 10**12, "concurrency": 10**6, "budget_daily_usd": 10**9}
    keys = [{"key": CLIENT_KEY, "name": "bench", "team": "bench", "limits": limits}]
    tracing = {
        "off": {"enabled": False},
        "on": {"enabled": True},
        "on_otlp": {"enabled": True, "endpoint": collector_url + "/v1/traces"},
        "on_otlp_10pct": {
            "enabled": True,
            "endpoint": collector_url + "/v1/traces",
            "sample_ratio": 0.1,
        },
    }
    async with contextlib.AsyncExitStack() as stack:
        out: dict[str, Services] = {}
        for mode in MODES:
            cfg = gateway_config(
                tmp, specs, ledger={"enabled": False}, tracing=tracing[mode],
                server={"access_log": False}, auth={"static_keys": keys, "key_store": False},
            )  # fmt: skip
            settings = Settings.model_validate(cfg)
            exporter = InMemorySpanExporter() if mode == "on" else None
            out[mode] = await stack.enter_async_context(
                build_services(
                    settings,
                    transport=MockTransport(_answer, timeouts=settings.timeouts),
                    monitor=False,
                    span_exporter=exporter,
                )
            )
        yield out


async def _drive(response: Any) -> None:
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        return None

    await response({"type": "http"}, receive, send)


async def block(svc: Services, n: int, stream: bool) -> float:
    """CPU µs per request over ``n`` requests, the export of their spans included."""
    pipeline, body = svc.pipeline, STREAM if stream else UNARY
    # A sampled client traceparent would override the sample ratio (ParentBased).
    traceparent = None if svc.settings.tracing.sample_ratio < 1 else TRACEPARENT
    gc.collect()
    t = time.process_time()
    for i in range(n):
        ctx = pipeline.new_context(f"b{i}", Endpoint.CHAT, traceparent)
        response = await pipeline.handle(ctx, AUTH, body)
        if stream:
            await _drive(response)
    await asyncio.to_thread(svc.tracing.flush)
    return (time.process_time() - t) / n * 1e6


async def request_path(n: int, blocks: int, collector_url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with gateways(Path(tmp), collector_url) as svcs:
            for svc in svcs.values():  # warm every path once
                await block(svc, 50, False)
                await block(svc, 50, True)
            samples: dict[str, dict[str, list[float]]] = {
                kind: {m: [] for m in MODES} for kind in ("unary", "stream")
            }
            for b in range(blocks):
                order = MODES if b % 2 == 0 else tuple(reversed(MODES))
                for kind in ("unary", "stream"):
                    for mode in order:
                        samples[kind][mode].append(await block(svcs[mode], n, kind == "stream"))
                print(f"block {b + 1}/{blocks}", flush=True)
    rows: dict[str, Any] = {}
    for kind, by_mode in samples.items():
        off = statistics.median(by_mode["off"])
        rows[kind] = {
            mode: {
                "cpu_us_median": statistics.median(v),
                "cpu_us_min": min(v),
                "cpu_us_max": max(v),
                "added_us": statistics.median(v) - off,
                "blocks_us": v,
            }
            for mode, v in by_mode.items()
        }
    return rows


def exported_posts(collector_url: str) -> int:
    with urllib.request.urlopen(collector_url + "/", timeout=5) as r:
        return int(r.read())


# ---------------------------------------------------------------- report


def write_report(data: dict[str, Any], out: Path) -> None:
    null = data["off_path"]
    changed = data["git"]["gateway_uncommitted"]
    uncommitted = f" (uncommitted: {', '.join(changed)})" if changed else ""
    lines = [
        "# Tracing: what it costs per request",
        "",
        f"Run {data['when']} at commit {data['git']['commit']}"
        + uncommitted
        + f"; {data['requests']} requests per block, {data['blocks']} blocks per mode "
        f"(ABBA){', quick run' if data['quick'] else ''}. `python -m bench tracing`.",
        "",
        "## Off (the default): the calls the pipeline makes",
        "",
        *table(
            ["what", "per request"],
            [
                [
                    "`Tracing.begin` + 6 `enter` + `close` on the no-op trace",
                    f"{num(null['calls_ns_per_request'], 0)} ns",
                ],
                ["memory blocks they allocate", num(null["allocated_blocks_per_request"], 3)],
                [
                    "checking a client's `traceparent` (only requests that send one)",
                    f"{num(null['traceparent_check_ns'], 0)} ns",
                ],
            ],
            "lr",
        ),
        "",
        "## The request path in one process: CPU per request",
        "",
        "on: spans to the SDK's in-memory exporter; on_otlp: spans exported over "
        "OTLP/HTTP (protobuf) to a collector stub in another process "
        f"({data['otlp_posts']} export posts received); on_otlp_10pct: the same with "
        "`sample_ratio: 0.1` (requests bring no `traceparent`, so the gateway's sampler "
        "decides; the other modes get a sampled client `traceparent`). CPU is the "
        "whole process's (the exporter's thread included), median block (min … max).",
        "",
    ]
    rows = []
    for kind in ("unary", "stream"):
        for mode in MODES:
            r = data["request_path"][kind][mode]
            rows.append([
                kind, mode,
                f"{num(r['cpu_us_median'], 1)} ({num(r['cpu_us_min'], 1)} … "
                f"{num(r['cpu_us_max'], 1)})",
                "-" if mode == "off" else num(r["added_us"], 1, sign=True),
            ])  # fmt: skip
    lines += table(["request", "tracing", "CPU µs / request", "added µs"], rows, "llrr")
    lines += [
        "",
        "The absolute figures are this harness's (no sockets, an engine that answers at "
        "once); the added column is what tracing costs. Off, the pipeline runs the calls "
        "of the first table and nothing else: no OpenTelemetry import, no span, no "
        "allocation.",
    ]
    results.write_markdown(out, lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per block")
    ap.add_argument("--blocks", type=int, default=8, help="blocks per mode (ABBA)")
    results.add_arguments(ap)
    args = ap.parse_args(argv)
    n = 300 if args.quick else args.requests
    blocks = 4 if args.quick else args.blocks
    data: dict[str, Any] = {
        "when": results.stamp(),
        "git": results.git_state(),
        "machine": machine.describe(("opentelemetry-sdk",)),
        "quick": args.quick,
        "requests": n,
        "blocks": blocks,
        "off_path": null_path(200_000),
    }
    with collector() as url:
        data["request_path"] = asyncio.run(request_path(n, blocks, url))
        data["otlp_posts"] = exported_posts(url)
    out = results.out_dir(args.quick, args.out)
    results.write_json(out / "tracing.json", data)
    write_report(data, out / "tracing.md")
    print((out / "tracing.md").read_text())


if __name__ == "__main__":
    main()
