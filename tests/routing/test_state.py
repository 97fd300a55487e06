"""The learned router's state file: atomic writes, validation, and replicas applying it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.routing.features import Features
from gateway.routing.learned import FEATURE_NAMES, LearnedPolicy
from gateway.routing.state import RoutingState, StateWatcher, read_state, write_state

MATH = Features(40, 1024, 1, False, False, "prove the lemma and solve the integral step by step")


def test_write_then_read_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    state = RoutingState(
        0.42,
        0.3,
        0.301,
        1000,
        weights=(0.5,) * len(FEATURE_NAMES),
        trained_on="feedback: 300 labels",
    )
    write_state(path, state)
    back = read_state(path)
    assert back is not None
    assert (back.threshold, back.target_large_share, back.sample) == (0.42, 0.3, 1000)
    assert back.weights == state.weights and back.trained_on == "feedback: 300 labels"
    assert os.listdir(path.parent) == ["state.json"]
    assert read_state(tmp_path / "missing.json") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b'{"threshold": 1.5}',
        b'{"threshold": "0.3"}',
        b'{"threshold": true}',
        b'{"threshold": 0.3, "weights": [1, "x"]}',
    ],
)
def test_a_damaged_state_file_is_refused_with_its_path(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=r"state\.json"):
        read_state(path)


def test_apply_sets_threshold_and_weights_and_checks_their_count() -> None:
    policy = LearnedPolicy({"target_large_share": 0.3})
    assert policy.choose(MATH, None)[0] == "large"  # type: ignore[arg-type]
    policy.apply(RoutingState(threshold=1.0))
    assert policy.threshold == 1.0
    assert policy.choose(MATH, None)[0] == "small"  # type: ignore[arg-type]
    negative = (-5.0,) * len(FEATURE_NAMES)
    policy.apply(RoutingState(threshold=0.5, weights=negative, trained_on="test"))
    assert policy.weights == negative and policy.trained_on == "test"
    with pytest.raises(ConfigError, match="weights"):
        policy.apply(RoutingState(threshold=0.5, weights=(1.0, 2.0)))


def test_the_watcher_applies_changes_and_keeps_the_state_when_a_file_breaks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    seen: list[float] = []
    watcher = StateWatcher(path, lambda s: seen.append(s.threshold), poll_s=0.01)
    assert watcher.load_once() is None and seen == []  # no file yet: the config's threshold

    async def scenario() -> None:
        watcher.start()
        write_state(path, RoutingState(threshold=0.25))
        await _until(lambda: seen == [0.25])
        path.write_bytes(b"not json")  # a hand edit gone wrong: logged, state kept
        await asyncio.sleep(0.05)
        assert seen == [0.25]
        write_state(path, RoutingState(threshold=0.75))
        await _until(lambda: seen == [0.25, 0.75])
        await watcher.stop()

    asyncio.run(scenario())
    assert watcher.applied == 2


def test_a_damaged_file_at_start_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"threshold": -1}')
    with pytest.raises(ConfigError, match="threshold"):
        StateWatcher(path, lambda s: None, poll_s=1).load_once()


async def _until(check: object, timeout: float = 3.0) -> None:
    assert callable(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "state not applied in time"
        await asyncio.sleep(0.01)
