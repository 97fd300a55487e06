"""Fixtures of the engines tests: the stand-in servers (``tests/support/standin.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engines.standin.process import StandinProcess
from tests.support.standin import fast_process, paced_process, reset


@pytest.fixture(scope="module")
def fast_server() -> Iterator[StandinProcess]:
    with fast_process() as process:
        yield process


@pytest.fixture(scope="module")
def paced_server() -> Iterator[StandinProcess]:
    with paced_process() as process:
        yield process


@pytest.fixture
def fast(fast_server: StandinProcess) -> StandinProcess:
    """The fast server, reset (each test starts with zeroed stats and no fault)."""
    return reset(fast_server)


@pytest.fixture
def paced(paced_server: StandinProcess) -> StandinProcess:
    """The paced server, reset."""
    return reset(paced_server)
