"""Soak: does the gateway's memory stay flat under a long, mixed, misbehaving load?

``python -m bench.soak [--duration 300 --concurrency 32]``; ``--metered`` runs the fully
metered open-loop soak instead (``bench/soak_metered.py``).

A ``tollgate serve`` process (one worker, local quotas with limits, ledger on, SQLite)
sits in front of a stand-in engine. Closed-loop workers send a mix that exercises every
path that could keep memory: plain and streamed chat, streams the client drops half-way,
completions, requests the gateway refuses (bad JSON, unknown model, wrong key, a key over
its rate limit), and engine errors. The gateway's resident memory (``VmRSS``) is sampled
every second with the number of requests done.

After a warm-up (the first quarter of the requests: caches, pools, the allocator's
arenas), memory should not grow with the request count. Reported: RSS at the end of the
warm-up and at the end, and the slope of RSS over requests (least squares), in KiB per
1,000 requests. A leak of one kilobyte per request shows as 1,000 KiB per 1,000.

Results: ``bench/results/soak.{json,md,png}``. ``tests/integration/test_soak.py`` runs a
short version and bounds the growth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import machine, plots, results
from bench import markdown as md
from engines.standin.process import StandinProcess

RESULTS = results.RESULTS
MSGS = [{"role": "user", "content": "say something about the sea"}]
#: A second key, limited to 30 requests a minute: most of its requests are refused.
LIMITED_KEY = "tg-soak-limited-key-0000000001"


@dataclass
class Sample:
    t_s: float
    requests: int
    rss_kib: int


@dataclass
class SoakResult:
    duration_s: float
    concurrency: int
    requests: int
    by_kind: dict[str, int]
    statuses: dict[str, int]
    samples: list[Sample] = field(default_factory=list)

    @property
    def warm(self) -> list[Sample]:
        """Samples after the first quarter of the requests."""
        cut = self.requests / 4
        return [s for s in self.samples if s.requests >= cut]

    def growth_kib(self) -> int:
        w = self.warm
        return w[-1].rss_kib - w[0].rss_kib if len(w) >= 2 else 0

    def slope_kib_per_1k(self) -> float:
        """Least-squares slope of RSS over requests done, after warm-up."""
        w = self.warm
        if len(w) < 3:
            return 0.0
        xs = [s.requests for s in w]
        ys = [s.rss_kib for s in w]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var == 0:
            return 0.0
        return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var

    def summary(self) -> dict[str, Any]:
        w = self.warm
        return {
            "duration_s": self.duration_s,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.duration_s, 1),
            "by_kind": self.by_kind,
            "statuses": self.statuses,
            "rss_start_mib": round(self.samples[0].rss_kib / 1024, 1) if self.samples else None,
            "rss_after_warmup_mib": round(w[0].rss_kib / 1024, 1) if w else None,
            "rss_end_mib": round(self.samples[-1].rss_kib / 1024, 1) if self.samples else None,
            "growth_after_warmup_kib": self.growth_kib(),
            "slope_kib_per_1k_requests": round(self.slope_kib_per_1k(), 1),
        }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def soak_gateway(
    workdir: Path, overrides: dict[str, dict[str, Any]] | None = None
) -> Iterator[tuple[Any, str]]:
    """A stand-in engine and a gateway process in front of it; yields (process, key).

    ``overrides``: config sections merged over the soak's (to isolate a component)."""
    from tests.support import CLIENT_KEY, EngineSpec, GatewayProcess, free_port, gateway_config
    from tests.support import write_config as write_gateway_config

    engine = StandinProcess(model="soak-small", ttft_ms=2, tpot_ms=1, max_num_seqs=256)
    engine.start()
    try:
        port = free_port()
        cfg = gateway_config(
            workdir,
            [EngineSpec("small-0", engine.base_url, "small", "soak-small")],
            port=port,
            server={"access_log": False},
            ledger={"spill_dir": str(workdir / "spill")},
            auth={"key_store": False},
        )
        for section, values in (overrides or {}).items():
            cfg[section] = {**cfg.get(section, {}), **values}
        cfg["auth"]["static_keys"][0]["limits"] = {"rpm": 10**9, "budget_daily_usd": 10**6}
        cfg["auth"]["static_keys"].append(
            {"key": LIMITED_KEY, "name": "limited", "limits": {"rpm": 30}}
        )
        with GatewayProcess(write_gateway_config(workdir, cfg), port) as gw:
            yield gw, CLIENT_KEY
    finally:
        engine.stop()


async def _one(client: httpx.AsyncClient, key: str, kind: str) -> int:
    auth = {"authorization": f"Bearer {key}"}
    chat = {"model": "small", "messages": MSGS, "max_tokens": 8}
    if kind == "chat":
        r = await client.post("/v1/chat/completions", json=chat, headers=auth)
    elif kind == "stream":
        async with client.stream(
            "POST", "/v1/chat/completions", json={**chat, "stream": True}, headers=auth
        ) as r:
            async for _ in r.aiter_bytes():
                pass
    elif kind == "stream_dropped":
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={**chat, "stream": True, "max_tokens": 64},
            headers=auth,
        ) as r:
            async for _ in r.aiter_bytes():
                break  # the client goes away after the first bytes
    elif kind == "completion":
        body = {"model": "small", "prompt": "the sea", "max_tokens": 8}
        r = await client.post("/v1/completions", json=body, headers=auth)
    elif kind == "bad_json":
        r = await client.post(
            "/v1/chat/completions",
            content=b'{"model": "small", "messages": [',
            headers={**auth, "content-type": "application/json"},
        )
    elif kind == "unknown_model":
        r = await client.post("/v1/chat/completions", json={**chat, "model": "nope"}, headers=auth)
    elif kind == "wrong_key":
        r = await client.post(
            "/v1/chat/completions",
            json=chat,
            headers={"authorization": "Bearer tg-wrong-key-000000000000000"},
        )
    elif kind == "rate_limited":
        r = await client.post(
            "/v1/chat/completions",
            json=chat,
            headers={"authorization": f"Bearer {LIMITED_KEY}"},
        )
    elif kind == "context_too_long":  # the engine refuses it (400 from vLLM)
        r = await client.post(
            "/v1/chat/completions", json={**chat, "max_tokens": 10**6}, headers=auth
        )
    else:
        raise ValueError(kind)
    return r.status_code


#: The request mix: kind -> weight.
MIX = {
    "chat": 30,
    "stream": 30,
    "stream_dropped": 10,
    "completion": 10,
    "bad_json": 4,
    "unknown_model": 4,
    "wrong_key": 4,
    "rate_limited": 4,
    "context_too_long": 4,
}


async def drive(
    gw: Any, key: str, duration_s: float, concurrency: int, *, progress: bool = False
) -> SoakResult:
    assert gw.proc is not None
    pid = gw.proc.pid
    result = SoakResult(duration_s, concurrency, 0, {k: 0 for k in MIX}, {})
    kinds, weights = list(MIX), list(MIX.values())
    rng = random.Random(7)
    deadline = time.monotonic() + duration_s
    start = time.monotonic()

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            try:
                status = str(await _one(client, key, kind))
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            result.requests += 1
            result.by_kind[kind] += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1

    async def sampler() -> None:
        while time.monotonic() < deadline:
            sample = Sample(round(time.monotonic() - start, 2), result.requests, rss_kib(pid))
            result.samples.append(sample)
            if progress and len(result.samples) % 10 == 0:
                print(
                    f"  t={sample.t_s:6.0f}s  requests {sample.requests:>8,}  "
                    f"gateway RSS {sample.rss_kib / 1024:6.1f} MiB",
                    flush=True,
                )
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30, limits=limits) as client:
        await asyncio.gather(sampler(), *(worker(client) for _ in range(concurrency)))
    result.samples.append(Sample(round(time.monotonic() - start, 2), result.requests, rss_kib(pid)))
    return result


def run(duration_s: float, concurrency: int, *, progress: bool = False) -> SoakResult:
    with (
        tempfile.TemporaryDirectory(prefix="tollgate-soak-") as tmp,
        soak_gateway(Path(tmp)) as (gw, key),
    ):
        return asyncio.run(drive(gw, key, duration_s, concurrency, progress=progress))


def write_results(res: SoakResult, out: Path) -> None:
    s = res.summary()
    data = {
        "summary": s,
        "machine": machine.describe(("uvicorn", "aiohttp", "httpx")),
        "samples": [asdict(x) for x in res.samples],
    }
    results.write_json(out / "soak.json", data)
    mix = ", ".join(f"{k} {v}" for k, v in s["by_kind"].items())
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(s["statuses"].items()))
    lines = [
        "# Soak: gateway memory under a long mixed load",
        "",
        f"{s['requests']:,} requests in {s['duration_s']:g} s ({s['requests_per_s']} req/s), "
        f"{s['concurrency']} closed-loop clients, one gateway worker (local quotas with "
        "limits, ledger on, SQLite) in front of a stand-in engine.",
        "",
        f"- Mix: {mix}.",
        f"- Statuses: {statuses}.",
        "",
        *md.table(
            [
                "RSS at start",
                "after warm-up (¼ of the requests)",
                "at the end",
                "growth after warm-up",
                "slope",
            ],
            [
                [
                    f"{s['rss_start_mib']} MiB",
                    f"{s['rss_after_warmup_mib']} MiB",
                    f"{s['rss_end_mib']} MiB",
                    f"{s['growth_after_warmup_kib']} KiB",
                    f"{s['slope_kib_per_1k_requests']} KiB per 1,000 requests",
                ]
            ],
        ),
        "",
        "A leak of one kilobyte per request would show as a slope of about 1,000 KiB per "
        "1,000 requests. ![RSS over requests](soak.png)",
        "",
    ]
    results.write_markdown(out / "soak.md", lines)
    _plot(res, out / "soak.png")


def _plot(res: SoakResult, path: Path) -> None:
    with plots.figure(path, size=(7, 3.2)) as (_, (ax,)):
        _draw(res, ax)


def _draw(res: SoakResult, ax: Any) -> None:
    ax.plot([s.requests for s in res.samples], [s.rss_kib / 1024 for s in res.samples])
    ax.axvline(res.requests / 4, linestyle=":", color="grey", label="end of warm-up")
    ax.set_xlabel("requests done")
    ax.set_ylabel("gateway RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Gateway memory under a mixed load")
    ax.legend(loc="lower right")


def main(argv: list[str] | None = None) -> int | None:
    args = sys.argv[1:] if argv is None else argv
    if "--metered" in args:  # the fully metered open-loop soak (bench/soak_metered.py)
        from bench import soak_metered

        return soak_metered.main([a for a in args if a != "--metered"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds (300)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument(
        "--metered",
        action="store_true",
        help="the fully metered open-loop soak instead (--metered --help)",
    )
    results.add_arguments(ap, "30 s")
    a = ap.parse_args(args)
    out = results.out_dir(a.quick, a.out)
    duration = 30.0 if a.quick else a.duration
    print(f"soak: {duration:g} s at concurrency {a.concurrency}", flush=True)
    res = run(duration, a.concurrency, progress=True)
    write_results(res, out)
    print((out / "soak.md").read_text())
    return None


if __name__ == "__main__":
    main()
