"""Benchmarks, each a ``python -m bench.NAME`` entry point writing to ``bench/results/``.

See bench/README.md (gateway overhead: ``bench.overhead``; upstream HTTP client choice:
``bench.upstream_clients``)."""
