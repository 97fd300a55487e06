"""The learned policy: features, calibrated threshold, and the shipped weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.routing import learned_train
from gateway.routing.learned import (
    FEATURE_NAMES,
    LearnedPolicy,
    featurize,
    threshold_for_share,
)
from gateway.routing.learned_weights import WEIGHTS
from gateway.routing.policies import build_policy
from gateway.routing.pool import EnginePool
from tests.routing.helpers import features, make_settings


def test_features_layout_and_keyword_groups() -> None:
    x = featurize(features(text="Prove this theorem, then write python code ```x```"))
    assert len(x) == len(FEATURE_NAMES) == len(WEIGHTS["weights"])
    named = dict(zip(FEATURE_NAMES, x, strict=True))
    assert named["kw_math"] > 0 and named["kw_code"] > 0 and named["code_fence"] == 1.0
    assert named["kw_simple"] == 0.0


def test_obvious_requests_go_to_the_obvious_tier() -> None:
    policy = LearnedPolicy({})
    pool = EnginePool(make_settings().engines)
    hard = features(
        text="prove the theorem step by step and analyze the trade-offs", max_tokens=2048
    )
    easy = features(text="hello! translate thanks into French", max_tokens=32)
    assert policy.choose(hard, pool) == ("large", "learned:large")
    assert policy.choose(easy, pool) == ("small", "learned:small")
    assert policy.score(hard) > policy.score(easy)


def test_threshold_is_calibrated_to_the_target_share() -> None:
    q = [i / 100 for i in range(101)]
    assert threshold_for_share(q, 0.3) == pytest.approx(0.7)
    assert threshold_for_share(q, 0.0) == 1.0 and threshold_for_share(q, 1.0) == 0.0
    low = LearnedPolicy({"target_large_share": 0.1})
    high = LearnedPolicy({"target_large_share": 0.6})
    assert low.threshold > high.threshold
    assert low.expected_large_share() == pytest.approx(0.1, abs=0.02)
    assert high.expected_large_share() == pytest.approx(0.6, abs=0.02)
    assert LearnedPolicy({"threshold": 0.42}).threshold == 0.42
    with pytest.raises(ConfigError, match="not within"):
        LearnedPolicy({"target_large_share": 1.5})
    assert isinstance(build_policy("learned", {}), LearnedPolicy)


def test_mismatched_weights_are_refused() -> None:
    with pytest.raises(ConfigError, match="feature layout"):
        LearnedPolicy({}, weights={**WEIGHTS, "features": ("bias",)})


def test_shipped_weights_are_what_the_training_script_produces(tmp_path: Path) -> None:
    out = tmp_path / "weights.py"
    learned_train.main(["--out", str(out)])
    shipped = Path(learned_train.__file__).with_name("learned_weights.py")
    assert out.read_text() == shipped.read_text()
