"""What the GPU check runs against its engines: conformance tests and closed-loop load.

Conformance is ``tests/real`` through a gateway; throughput is closed-loop load straight
to an engine and through a gateway (``configs/tollgate.yaml``), one :class:`Leg` each.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLIENT_KEY = "tg-local-dev-key"


@dataclass(frozen=True)
class Leg:
    """One closed-loop run against one target."""

    tier: str
    path: str  # "engine" or "gateway"
    requests: int
    failures: int
    seconds: float
    completion_tokens: int
    p50_ms: float
    p99_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds


async def closed_loop(
    url: str, model: str, key: str | None, *, concurrency: int, seconds: float, max_tokens: int
) -> tuple[int, int, int, list[float]]:
    """(requests, failures, completion tokens, latencies) of ``seconds`` of load."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    headers = {"authorization": f"Bearer {key}"} if key else {}
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0, "tokens": 0}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/chat/completions", json=body)
                    response.raise_for_status()
                    counts["tokens"] += int(response.json()["usage"]["completion_tokens"])
                    counts["ok"] += 1
                    latencies.append((time.perf_counter() - began) * 1000)
                except (httpx.HTTPError, KeyError, ValueError):
                    counts["failed"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts["ok"], counts["failed"], counts["tokens"], latencies


def measure(
    tier: str, path: str, url: str, model: str, key: str | None, opts: argparse.Namespace
) -> Leg:
    began = time.perf_counter()
    ok, failed, tokens, lat = asyncio.run(
        closed_loop(
            url,
            model,
            key,
            concurrency=opts.concurrency,
            seconds=opts.seconds,
            max_tokens=opts.max_tokens,
        )
    )
    lat.sort()
    p50 = lat[len(lat) // 2] if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
    return Leg(tier, path, ok, failed, time.perf_counter() - began, tokens, p50, p99)


def start_gateway(out: Path, port: int) -> subprocess.Popen[bytes]:
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "tollgate.yaml").read_text())
    cfg["server"] = {**cfg["server"], "port": port, "access_log": False}
    cfg["timeouts"] = {**cfg["timeouts"], "ttft_s": 30}
    for engine in cfg["engines"]:
        engine.update(max_concurrency=256, max_queue=1024)
    cfg["ledger"] = {"url": f"sqlite:///{out}/ledger.db", "spill_dir": str(out / "spill")}
    cfg["pricing"] = {"file": str(ROOT / "configs" / "prices.yaml")}
    path = out / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = (out / "gateway.log").open("wb")
    argv = [sys.executable, "-m", "gateway.cli", "serve", "-c", str(path)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(1)
    proc.terminate()
    raise SystemExit(f"gateway not ready; see {out / 'gateway.log'}")


def conformance(out: Path) -> dict[str, int]:
    xml = out / "conformance.xml"
    files = ["tests/real/test_real_engines.py", "tests/real/test_real_tools.py"]
    argv = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider"]
    with (out / "conformance.log").open("wb") as log:
        subprocess.run([*argv, f"--junitxml={xml}"], cwd=ROOT, stdout=log, stderr=log, check=False)
    if not xml.exists():
        return {"tests": 0, "failures": 0, "errors": 1, "skipped": 0}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    return {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
