"""One /metrics across workers: snapshots merged by mode, exited workers retired.

The multiprocess half (counters in mmap files) needs prometheus_client imported with
``PROMETHEUS_MULTIPROC_DIR`` set, so it runs in child processes here; the snapshot half
is plain Python and runs in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics_multiproc
from gateway.metrics import FunctionGauge, Metrics
from gateway.metrics_multiproc import SampledRegistry
from tests.support import ROOT


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    raw = text.decode() if isinstance(text, bytes) else text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(raw)
        for s in family.samples
    }


def worker_registry(in_flight: float, up: float, store_up: float, written: int) -> Metrics:
    """One worker's scrape-time values, as :class:`Metrics` declares them."""
    m = Metrics(multiprocess_dir=None)
    m.in_flight.set_function(lambda: in_flight)
    m.engine_up.labels("e0", "small").set_function(lambda: up)
    m.quota_store_up.set_function(lambda: store_up)

    class Ledger:
        def collect(self) -> list[object]:
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

            return [
                CounterMetricFamily("tollgate_ledger_records_written", "w", value=written),
                GaugeMetricFamily("tollgate_ledger_database_up", "u", value=store_up),
                GaugeMetricFamily("tollgate_ledger_spill_pending_bytes", "b", value=100),
            ]

    m.registry.register(Ledger())
    return m


def test_each_gauge_combines_by_its_mode(tmp_path: Path) -> None:
    a = worker_registry(in_flight=3, up=0, store_up=1, written=5)
    b = worker_registry(in_flight=4, up=1, store_up=0, written=7)
    assert isinstance(a.registry, SampledRegistry) and isinstance(b.registry, SampledRegistry)
    metrics_multiproc.publish(tmp_path, a.registry, name="1")
    metrics_multiproc.publish(tmp_path, b.registry, name="2")
    merged = samples(metrics_multiproc.render(tmp_path, SampledRegistry()))
    assert merged[("tollgate_in_flight_requests", ())] == 7  # sum
    assert merged[("tollgate_engine_up", (("engine", "e0"), ("tier", "small")))] == 1  # max
    assert merged[("tollgate_quota_store_up", ())] == 0  # min
    assert merged[("tollgate_ledger_database_up", ())] == 0  # min (FOREIGN_MODES)
    assert merged[("tollgate_ledger_spill_pending_bytes", ())] == 100  # max: a shared dir
    assert merged[("tollgate_ledger_records_written_total", ())] == 12  # counters sum


def test_a_retired_worker_keeps_its_counters_and_drops_its_gauges(tmp_path: Path) -> None:
    for name, m in {
        "11": worker_registry(in_flight=3, up=1, store_up=1, written=5),
        "12": worker_registry(in_flight=4, up=1, store_up=1, written=7),
    }.items():
        assert isinstance(m.registry, SampledRegistry)
        metrics_multiproc.publish(tmp_path, m.registry, name=name)
    metrics_multiproc.retire(tmp_path, 11)
    metrics_multiproc.retire(tmp_path, 12)
    replacement = worker_registry(in_flight=1, up=1, store_up=1, written=2)
    assert isinstance(replacement.registry, SampledRegistry)
    merged = samples(metrics_multiproc.render(tmp_path, replacement.registry))
    assert merged[("tollgate_ledger_records_written_total", ())] == 5 + 7 + 2
    assert merged[("tollgate_in_flight_requests", ())] == 1
    assert not (tmp_path / "sampled_11.json").exists()
    retired = json.loads((tmp_path / metrics_multiproc.RETIRED).read_text())
    assert {f["type"] for f in retired} == {"counter"}


def test_a_removed_engine_leaves_the_scrape() -> None:
    m = Metrics(multiprocess_dir=None)
    m.engine_up.labels("e0", "small").set_function(lambda: 1.0)
    assert b'tollgate_engine_up{engine="e0",tier="small"} 1.0' in m.render()
    m.engine_up.remove("e0", "small")
    assert b'engine="e0"' not in m.render()


def test_function_gauges_render_as_the_prometheus_gauge_did() -> None:
    """Single-worker exposition is unchanged: same TYPE/HELP lines and sample text."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    old = CollectorRegistry()
    Gauge("g_plain", "doc", registry=old).set_function(lambda: 2)
    Gauge("g_labelled", "doc", ["engine"], registry=old).labels("e").set_function(lambda: 3)
    Gauge("g_unset", "doc", registry=old)
    new = CollectorRegistry()
    FunctionGauge("g_plain", "doc", registry=new, mode="sum").set_function(lambda: 2)
    FunctionGauge("g_labelled", "doc", ("engine",), registry=new, mode="sum").labels(
        "e"
    ).set_function(lambda: 3)
    FunctionGauge("g_unset", "doc", registry=new, mode="sum")
    assert generate_latest(new) == generate_latest(old)


CHILD = textwrap.dedent(
    """
    import sys
    from gateway.metrics import Metrics
    m = Metrics()
    assert m.multiprocess_dir is not None, "not in multiprocess mode"
    m.requests.labels("small", "small", "200").inc(int(sys.argv[1]))
    m.latency.labels("small", "small").observe(0.02)
    m.loop_lag.set(float(sys.argv[2]))
    m.in_flight.set_function(lambda: float(sys.argv[1]))
    m.publish()
    """
)


READER = "import sys; from gateway.metrics import Metrics; print(Metrics().render().decode())"


def test_counters_of_every_process_and_of_exited_ones_add_up(tmp_path: Path) -> None:
    env = {**os.environ, metrics_multiproc.ENV: str(tmp_path)}
    pids = []
    for count, lag in ((3, 0.5), (4, 0.1)):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(count), str(lag)], cwd=ROOT, env=env
        )
        assert proc.wait(60) == 0
        pids.append(proc.pid)

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        run = subprocess.run(
            [sys.executable, "-c", READER], cwd=ROOT, env=env, check=True, capture_output=True
        )
        return samples(run.stdout)

    ok = (("model", "small"), ("status", "200"), ("tier", "small"))
    merged = scrape()
    assert merged[("tollgate_requests_total", ok)] == 7
    assert merged[("tollgate_request_duration_seconds_count", (ok[0], ok[2]))] == 2
    assert merged[("tollgate_event_loop_lag_seconds", ())] == 0.5  # livemax
    assert merged[("tollgate_in_flight_requests", ())] == 7  # both snapshots
    metrics_multiproc.retire(tmp_path, pids[0])  # what the supervisor does when one exits
    merged = scrape()
    assert merged[("tollgate_requests_total", ok)] == 7  # its counts stay
    assert merged[("tollgate_event_loop_lag_seconds", ())] == 0.1  # its live gauge goes
    assert merged[("tollgate_in_flight_requests", ())] == 4
