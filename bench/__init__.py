"""The benchmarks: one harness, ``python -m bench <scenario>`` (see :mod:`bench.cli`).

Shared by every scenario: :mod:`bench.stats`, :mod:`bench.markdown`, :mod:`bench.plots`,
:mod:`bench.results` (the layout under ``bench/results/``), :mod:`bench.loadgen` and
:mod:`bench.machine`. Servers and configs come from ``tests.support``; bench imports no
other test module. See bench/README.md."""
