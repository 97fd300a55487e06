"""Fixtures shared by the whole suite (the helpers live in tests/support/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engines.standin.process import StandinProcess


@pytest.fixture(scope="session")
def standin_pair() -> Iterator[dict[str, StandinProcess]]:
    """A small and a large stand-in engine, shared by the session; reset per test."""
    small = StandinProcess(model="standin-small", tpot_ms=1, max_num_seqs=64)
    large = StandinProcess(model="standin-large", tpot_ms=2, max_num_seqs=64)
    embed = StandinProcess(model="standin-embed", embeddings=True)
    for p in (small, large, embed):
        p.start()
    try:
        yield {"small": small, "large": large, "embed": embed}
    finally:
        for p in (small, large, embed):
            p.stop()
