"""Which HTTP client should the gateway use to reach its engines? Measured, not assumed.

``python -m bench.upstream_clients [--duration 5 --concurrency 1,16,64,256 --quick]``

In one run, against one stand-in engine, for each concurrency and mode (non-streaming,
streaming), closed-loop workers drive:

* ``httpx``: a pooled ``httpx.AsyncClient`` configured as the gateway's engine client
  was before this comparison (its timeouts, status handling and SSE parsing);
* ``aiohttp``: a ``ClientSession`` + ``TCPConnector`` doing the same work (the same
  timeouts, status check and the gateway's ``SSEReader`` on the stream);
* ``gateway``: the gateway's :class:`gateway.upstream.client.AiohttpTransport`, the
  aiohttp-based transport that was the default until ``http`` replaced it;
* ``http``: the gateway's :class:`gateway.upstream.http.HttpTransport` (the default now),
  a keep-alive HTTP/1.1 client on ``asyncio.Protocol`` + httptools, with its timeouts,
  status handling and SSE parsing;
* ``httpx2``: pydantic's fork of httpx (installed with ``openai``), whose reworked
  connection pool targets exactly the per-request pool scan, with the same settings;
* ``raw``: the benchmark's own keep-alive client (:mod:`bench.loadgen`) as a floor:
  what the HTTP exchange costs with next to no client code (it does no SSE parsing).

The client runs in this process on core 0 under uvloop; the stand-in has core 1. The
figure that matters is the client's CPU time per request: it is what the gateway's
event loop pays per upstream call, and it caps how many calls one worker can make.
Results: ``bench/results/upstream_clients.{json,md}``.
"""

from __future__ import annotations

import argparse

from bench import machine, results
from bench.upstream_client_report import write_markdown
from bench.upstream_client_runs import Config, run


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench upstream-clients")
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--duration", type=float, help="seconds per cell (5; quick 2)")
    p.add_argument("--repeats", type=int, help="repeats per cell, order alternated (2; quick 1)")
    results.add_arguments(p)
    a = p.parse_args(argv)
    return Config(
        concurrency=tuple(int(c) for c in a.concurrency.split(",")),
        duration=a.duration if a.duration is not None else (2.0 if a.quick else 5.0),
        warmup=0.5 if a.quick else 1.0,
        repeats=a.repeats if a.repeats is not None else (1 if a.quick else 2),
        out_dir=results.out_dir(a.quick, a.out),
        quick=a.quick,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    load = machine.wait_for_quiet(0.15, 300)
    if load >= 0.15:
        print(f"warning: other processes use {load:.2f} cores; results will be noisy", flush=True)
    data = run(cfg)
    data["quick"] = cfg.quick
    results.write_json(cfg.out_dir / "upstream_clients.json", data)
    write_markdown(data, cfg.out_dir / "upstream_clients.md")
    print(f"\nrecommendation: {data['recommendation']['choice']}")
    print(f"wrote {cfg.out_dir}/upstream_clients.json, upstream_clients.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
