"""The ledger benchmark's three measurements: ledger on vs off at a fixed rate (ABBA),
the writer's throughput, and the spill path (queue full, then replay).
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.ledger_rig import Backend, Config, new_record, pcts_ms, pcts_us, verify, writer_settings
from bench.stats import added as added_ms
from bench.stats import bootstrap_added
from gateway.config import LedgerSettings
from gateway.ledger.record import LedgerRecord, NullRecorder, Recorder
from gateway.ledger.store import LedgerStore, LedgerUnavailableError
from gateway.ledger.writer import LedgerWriter


@dataclass
class Block:
    mode: str
    record_ns: list[int] = field(default_factory=list)
    #: From the engine's reply to the request's end: where the ledger can add time.
    post_s: list[float] = field(default_factory=list)
    #: From the scheduled arrival to the end (includes the engine's fixed time).
    latency_s: list[float] = field(default_factory=list)
    sent: int = 0


class EngineThread:
    """Replies to requests after a fixed time, the way a socket would: from outside the
    event loop, waking it at once (``call_soon_threadsafe``). asyncio/uvloop timers
    only have millisecond resolution, which would swamp microsecond differences."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, asyncio.Future[float]]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    def reply_after(self, seconds: float) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = self._loop.create_future()
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (time.perf_counter() + seconds, self._seq, fut))
            self._cond.notify()
        return fut

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                if not self._heap:
                    self._cond.wait()
                    continue
                due = self._heap[0][0]
                now = time.perf_counter()
                if due > now:
                    self._cond.wait(due - now)
                    continue
                _, _, fut = heapq.heappop(self._heap)
                self._loop.call_soon_threadsafe(_reply, fut, time.perf_counter())

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(5)


def _reply(fut: asyncio.Future[float], at: float) -> None:
    if not fut.done():
        fut.set_result(at)


async def run_block(
    mode: str,
    recorder: Recorder,
    cfg: Config,
    seconds: float,
    tag: str,
    start_index: int,
    engine: EngineThread,
    seed: int,
) -> Block:
    loop = asyncio.get_running_loop()
    block = Block(mode)
    engine_s = cfg.engine_ms / 1000
    n = int(seconds * cfg.rate)
    # Poisson arrivals: no phase lock between the arrival grid and the loop's timers.
    gaps = np.random.default_rng(seed).exponential(1.0 / cfg.rate, n)
    arrivals = np.cumsum(gaps)
    tasks: set[asyncio.Task[None]] = set()

    async def request(i: int, arrival: float) -> None:
        replied = await engine.reply_after(engine_s)
        rec = new_record(start_index + i, tag)
        t0 = time.perf_counter_ns()
        recorder.record(rec)
        block.record_ns.append(time.perf_counter_ns() - t0)
        done = time.perf_counter()
        block.post_s.append(done - replied)
        block.latency_s.append(done - arrival)

    t_start = time.perf_counter() + 0.05
    for i in range(n):
        arrival = t_start + float(arrivals[i])
        delay = arrival - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        task = loop.create_task(request(i, arrival))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    block.sent = n
    return block


async def on_vs_off(backend: Backend, cfg: Config, workdir: Path) -> dict[str, Any]:
    url = backend.fresh_url()
    store = LedgerStore.from_url(url)
    writer = LedgerWriter(store, writer_settings(url, workdir / f"spill-{backend.kind}"))
    await writer.start()
    engine = EngineThread(asyncio.get_running_loop())
    off = NullRecorder()
    order = [("off" if (k % 4) in (0, 3) else "on") for k in range(cfg.blocks)]  # ABBA
    seconds = cfg.duration / cfg.blocks
    blocks: list[Block] = []
    index = 0
    try:
        # warm-up, both ways: first connection, caches
        await run_block("on", writer, cfg, 1.0, "warm", 0, engine, 99)
        await run_block("off", off, cfg, 1.0, "warm-off", 0, engine, 98)
        for k, mode in enumerate(order):
            gc.collect()
            await asyncio.sleep(0.3)
            gc.disable()
            recorder = writer if mode == "on" else off
            try:
                blk = await run_block(mode, recorder, cfg, seconds, "on", index, engine, k)
            finally:
                gc.enable()
            if mode == "on":
                index += blk.sent
            blocks.append(blk)
            print(
                f"  {backend.kind:8} block {k + 1}/{len(order)} {mode:3}: record() p50 "
                f"{np.percentile(blk.record_ns, 50) / 1000:.2f} us, reply-to-done p50 "
                f"{np.percentile(blk.post_s, 50) * 1e6:.1f} us, p99 "
                f"{np.percentile(blk.post_s, 99) * 1e6:.1f} us",
                flush=True,
            )
    finally:
        engine.close()
    await writer.flush()
    stats = writer.stats()
    await writer.aclose()
    check = await asyncio.to_thread(verify, store, "on-", index)
    store.dispose()

    def merged(mode: str, attr: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(b, attr)) for b in blocks if b.mode == mode])

    post_off, post_on = merged("off", "post_s"), merged("on", "post_s")
    added: dict[str, Any] = {f"p{p}_ms": added_ms(post_off, post_on, p, digits=4) for p in (50, 99)}
    added |= {f"p{p}_ci95_ms": bootstrap_added(post_off, post_on, p, digits=4) for p in (50, 99)}
    offs = [b for b in blocks if b.mode == "off"]
    ons = [b for b in blocks if b.mode == "on"]
    per_pair = [added_ms(a.post_s, b.post_s, 50, digits=4) for a, b in zip(offs, ons, strict=False)]
    return {
        "requests_per_mode": {"off": int(post_off.size), "on": int(post_on.size)},
        "record_call_us": {
            "off": pcts_us(merged("off", "record_ns")),
            "on": pcts_us(merged("on", "record_ns")),
        },
        "reply_to_done_ms": {"off": pcts_ms(post_off), "on": pcts_ms(post_on)},
        "request_latency_ms": {
            "off": pcts_ms(merged("off", "latency_s")),
            "on": pcts_ms(merged("on", "latency_s")),
        },
        "added_latency": added,
        "added_p50_ms_per_block_pair": per_pair,
        "zero_loss": check,
        "writer": stats.to_dict(),
    }


async def throughput(backend: Backend, cfg: Config, workdir: Path) -> dict[str, Any]:
    url = backend.fresh_url()
    store = LedgerStore.from_url(url)
    n = cfg.throughput_records
    writer = LedgerWriter(
        store, writer_settings(url, workdir / f"spill-tp-{backend.kind}", queue_max=n + 1000)
    )
    await writer.start()
    recs = [new_record(i, "tp") for i in range(n)]
    t0 = time.perf_counter()
    calls = np.empty(n, dtype=np.int64)
    for i, rec in enumerate(recs):
        c0 = time.perf_counter_ns()
        writer.record(rec)
        calls[i] = time.perf_counter_ns() - c0
        if i % 2000 == 1999:
            await asyncio.sleep(0)  # let the writer take batches, as a server loop would
    accepted = time.perf_counter() - t0
    while writer.stats().written < n:  # noqa: ASYNC110 - polling the writer's counters
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    await writer.aclose()
    check = await asyncio.to_thread(verify, store, "tp-", n)
    store.dispose()
    return {
        "records": n,
        "batch_size": LedgerSettings().batch_size,
        "record_call_us": pcts_us(calls),
        "accepted_in_s": round(accepted, 3),
        "committed_in_s": round(elapsed, 3),
        "records_per_s": round(n / elapsed),
        "zero_loss": check,
    }


class Switch:
    """A store that can be switched off (unreachable) and on."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.down = False
        self.gate = threading.Event()
        self.gate.set()

    def insert(self, records: Sequence[LedgerRecord]) -> int:
        self.gate.wait()
        if self.down:
            raise LedgerUnavailableError("switched off")
        return self.store.insert(records)

    def migrate(self) -> None:
        if self.down:
            raise LedgerUnavailableError("switched off")
        self.store.migrate()

    def ping(self) -> None:
        if self.down:
            raise LedgerUnavailableError("switched off")
        self.store.ping()


async def spill_path(backend: Backend, cfg: Config, workdir: Path) -> dict[str, Any]:
    url = backend.fresh_url()
    store = LedgerStore.from_url(url)
    store.migrate()
    sw = Switch(store)
    n = cfg.spill_records
    writer = LedgerWriter(
        sw,
        writer_settings(
            url,
            workdir / f"spill-sp-{backend.kind}",
            queue_max=100,
            retry_max_s=0.5,
            auto_migrate=False,
        ),
    )
    await writer.start()
    sw.gate.clear()  # the database hangs: the queue fills and record() spills
    sw.down = True
    calls = np.empty(n, dtype=np.int64)
    for i in range(n):
        rec = new_record(i, "sp")
        c0 = time.perf_counter_ns()
        writer.record(rec)
        calls[i] = time.perf_counter_ns() - c0
    sw.gate.set()
    await writer.flush()
    spilled = writer.stats().spilled
    sw.down = False
    t0 = time.perf_counter()
    while writer.stats().written < n:  # noqa: ASYNC110 - polling the writer's counters
        await asyncio.sleep(0.01)
    replay_s = time.perf_counter() - t0
    await writer.aclose()
    check = await asyncio.to_thread(verify, store, "sp-", n)
    store.dispose()
    return {
        "records": n,
        "record_call_us_queue_full": pcts_us(calls[200:]),
        "spilled": spilled,
        "replay_s": round(replay_s, 3),
        "replay_records_per_s": round(n / replay_s) if replay_s else None,
        "zero_loss": check,
    }
