"""Where the gateway's CPU goes under load: py-spy samples of the gateway process.

py-spy samples from outside the process (no instrumentation inside the gateway), only
while a thread is on the CPU (idle waits in the event loop are left out), so a
function's share of the samples is its share of the gateway's busy time.
"""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import uvloop

from bench.loadgen import ConnectionPool, Target, open_loop
from bench.machine import cpu_seconds

#: Pipeline stages and other spots whose inclusive time is worth a line of its own.
SPOTS = {
    "OpenAIRoutes (whole request inside the route)": re.compile(r"^OpenAIRoutes\.__call__ \("),
    "Pipeline.handle (the request path)": re.compile(r"^Pipeline\.handle \("),
    "Admission.admit (parse, size, reserve)": re.compile(r"^Admission\.admit \("),
    "route (features + decision)": re.compile(r"\(.*gateway/request/route\.py"),
    "Forwarder.relay (upstream call)": re.compile(r"^Forwarder\.relay \("),
    "Pipeline._stream_events (upstream stream)": re.compile(r"^Pipeline\._stream_events \("),
    "Pipeline.finish (settle + record + metrics)": re.compile(r"^Pipeline\.finish \("),
    "Observer.finished (metrics + access log)": re.compile(r"^Observer\.finished \("),
    "TokenCounter (prompt count)": re.compile(r"\(.*gateway/tokens\.py"),
    "aiohttp (upstream client)": re.compile(r"\((.*/)?aiohttp/"),
    "quotas (Redis link, Lua)": re.compile(r"\(.*gateway/quotas/"),
    "logging": re.compile(r"\((.*/)?logging/"),
    "prometheus_client": re.compile(r"\((.*/)?prometheus_client/"),
    "uvicorn httptools protocol": re.compile(r"\((.*/)?uvicorn/protocols/"),
    "starlette/fastapi routing+middleware": re.compile(r"\((.*/)?(starlette|fastapi)/"),
}


def py_spy() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


def profile_gateway(
    rig: Any, target: Target, name: str, rate: float, seconds: float, out_dir: Path
) -> dict[str, Any]:
    """Sample the running gateway while the open-loop load on ``target`` drives it."""
    from bench.rig import HOST

    exe = py_spy()
    if exe is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    raw = out_dir / f"profile-{name}.txt"
    out_dir.mkdir(parents=True, exist_ok=True)

    cpu = 0.0

    async def load() -> Any:
        pool = ConnectionPool(HOST, target.port)
        await pool.warm(32)
        await open_loop(pool, target, rate=rate, duration=1.0)
        spy = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(rig.gateway_pid), "--duration", str(int(seconds)),
            "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        before = cpu_seconds(rig.gateway_pid)
        try:
            result = await open_loop(pool, target, rate=rate, duration=seconds + 0.5)
        finally:
            pool.close()
        nonlocal cpu
        cpu = cpu_seconds(rig.gateway_pid) - before
        _, err = await asyncio.wait_for(spy.communicate(), 30)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        return result

    print(f"== profile: py-spy on the gateway for {seconds:.0f} s at {rate:g} rps", flush=True)
    result = uvloop.run(load())
    summary = summarize(raw.read_text())
    summary["file"] = raw.name
    summary["requests"] = int(result.ok.sum())
    summary["seconds"] = seconds
    summary["rate_rps"] = rate
    summary["gateway_cpu_ms_per_request"] = round(cpu * 1000 / max(1, summary["requests"]), 3)
    return summary


def summarize(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self time by function and by module, and inclusive time of :data:`SPOTS`."""
    total = 0
    self_fn: collections.Counter[str] = collections.Counter()
    self_mod: collections.Counter[str] = collections.Counter()
    spots: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        self_fn[_strip_line(leaf)] += count
        self_mod[_module(leaf)] += count
        for name, pattern in SPOTS.items():
            if any(pattern.search(f) for f in frames):
                spots[name] += count

    def share(c: collections.Counter[str], n: int | None) -> list[list[Any]]:
        return [[k, v, round(100 * v / total, 1)] for k, v in c.most_common(n)]

    return {
        "samples": total,
        "self_by_function": share(self_fn, top),
        "self_by_module": share(self_mod, top),
        "inclusive": [[k, spots[k], round(100 * spots[k] / total, 1)] for k in SPOTS if total],
    }


_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _strip_line(frame: str) -> str:
    m = _FRAME.match(frame)
    return f"{m['fn']} ({_short(m['file'])})" if m else frame


def _module(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = _short(m["file"])
    parts = path.split("/")
    if parts[0] == "gateway":
        return path.removesuffix(".py").replace("/", ".")
    return parts[0].removesuffix(".py")


_PREFIX = re.compile(r"^.*?(site-packages/|/lib/python3\.\d+/)")
_ROOT = str(Path(__file__).resolve().parents[1]) + "/"


def _short(path: str) -> str:
    """``starlette/routing.py``, ``asyncio/events.py``, ``gateway/request/pipeline.py``."""
    return _PREFIX.sub("", path).removeprefix(_ROOT)
