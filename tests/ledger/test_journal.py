"""The write-ahead journal: a killed process loses no record it had accepted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import openai

from engines.standin.process import StandinProcess
from gateway.ledger.journal import Journal
from gateway.ledger.spill import decode
from gateway.ledger.store import LedgerStore
from gateway.ledger.writer import LedgerWriter
from tests.ledger.factories import records
from tests.ledger.test_writer import MemorySink, settings, wait_for
from tests.support import CLIENT_KEY, EngineSpec, GatewayProcess, free_port, gateway_config
from tests.support import write_config as write_gateway_config

ROOT = Path(__file__).resolve().parents[2]

#: A writer that accepts records but never gets to write them (the database hangs),
#: then waits to be killed.
DOOMED_WRITER = textwrap.dedent(
    """
    import asyncio, sys, threading
    from gateway.config import LedgerSettings
    from gateway.ledger.writer import LedgerWriter
    from tests.ledger.factories import records
    from tests.ledger.test_writer import MemorySink

    async def main():
        sink = MemorySink()
        sink.gate.clear()  # every insert hangs
        w = LedgerWriter(sink, LedgerSettings(spill_dir=sys.argv[1], flush_interval_s=0.05))
        await w.start()
        for rec in records(int(sys.argv[2])):
            w.record(rec)
        await asyncio.sleep(0.3)  # the journal is written on the next loop turn
        print("accepted", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def journal_files(spill: Path) -> list[Path]:
    return sorted(spill.glob("journal-*.jsonl"))


def kill_a_writer_holding(spill: Path, n: int) -> None:
    """Run DOOMED_WRITER until it accepted ``n`` records, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DOOMED_WRITER, str(spill), str(n)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "accepted"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


async def test_records_of_a_killed_writer_are_replayed_by_the_next(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    kill_a_writer_holding(spill, 150)
    assert journal_files(spill)  # left behind, with every accepted record
    sink = MemorySink()
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()  # replays what an earlier run left
    await wait_for(lambda: len(sink.rows) == 150)
    assert set(sink.rows) == {r.request_id for r in records(150)}
    await w.aclose()
    assert journal_files(spill) == []


async def test_the_journal_forgets_records_once_they_are_durable(tmp_path: Path) -> None:
    sink = MemorySink()
    w = LedgerWriter(sink, settings(tmp_path))
    await w.start()
    for rec in records(100):
        w.record(rec)
    await wait_for(lambda: len(sink.rows) == 100)
    await w.flush()
    assert [p.stat().st_size for p in journal_files(tmp_path / "spill")] == [0]
    assert w.stats().spill_pending_bytes == 0  # the live journal is not "pending replay"
    await w.aclose()
    assert journal_files(tmp_path / "spill") == []


async def test_journal_segments_roll_over_and_are_removed_when_durable(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=1000)
    lines = [b"x" * 99 + b"\n" for _ in range(25)]
    for seq, line in enumerate(lines):
        j.append(line, seq)
        if seq % 5 == 4:
            j.flush()
    assert len(journal_files(tmp_path)) == 3  # 1000-byte segments: 10 + 10 + 5 lines
    j.release(12)  # records 0..11 durable: only the first segment can go
    assert len(journal_files(tmp_path)) == 2
    j.close(20)  # records 20..24 are not durable: their segment stays for replay
    left = journal_files(tmp_path)
    assert len(left) == 1 and left[0].read_bytes() == b"".join(lines[20:])


def test_a_gateway_killed_with_sigkill_keeps_every_answered_request(
    standin_pair: dict[str, StandinProcess], tmp_path: Path
) -> None:
    """SIGKILL while answered requests wait in memory; the next start records them all."""
    engine = EngineSpec("small-0", standin_pair["small"].base_url, "small", "standin-small")
    port = free_port()
    cfg = gateway_config(
        tmp_path,
        [engine],
        port=port,
        # Batches wait 60 s in memory: without the journal a kill loses all of them.
        ledger={"flush_interval_s": 60, "batch_size": 10_000, "spill_dir": str(tmp_path / "sp")},
    )
    path = write_gateway_config(tmp_path, cfg)
    gw = GatewayProcess(path, port).start()
    try:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=CLIENT_KEY, max_retries=0)
        ids = set()
        for _ in range(12):
            resp = client.chat.completions.with_raw_response.create(
                model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            ids.add(resp.headers["x-request-id"])
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
    finally:
        gw.stop()
    journaled = {
        decode(line).request_id
        for p in journal_files(tmp_path / "sp")
        for line in p.read_bytes().splitlines()
    }
    assert journaled == ids
    with GatewayProcess(path, port):  # start-up replays the journal before serving
        store = LedgerStore.from_url(cfg["ledger"]["url"])
        try:
            assert set(store.request_ids()) == ids
        finally:
            store.dispose()
