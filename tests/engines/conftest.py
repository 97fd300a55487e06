"""Fixtures of the engines tests: the stand-in servers (``tests/support/standin.py``) and
the fake preparation (``tests/support/preparing.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.cache import CacheLayout
from engines.prepare import Preparer
from engines.profiles import Profile, load_profile
from engines.standin.process import StandinProcess
from tests.support.preparing import KERNELS_AVX512, FakeRunner, make_preparer
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


@pytest.fixture
def layout(tmp_path: Path) -> CacheLayout:
    return CacheLayout.at(tmp_path / "cache")


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def preparer(layout: CacheLayout, runner: FakeRunner) -> Preparer:
    return make_preparer(layout, runner, KERNELS_AVX512)


@pytest.fixture
def profile() -> Profile:
    return load_profile("local-cpu", environ={})
