"""A learned router: a small logistic model estimates P(large tier needed).

What it is, honestly: a logistic regression over 13 cheap features (sizes, tools/JSON,
keyword-group hits in the last user message, code fences). Its weights
(:mod:`gateway.routing.learned_weights`) were fitted by
``python -m gateway.routing.learned_train`` on *synthetic* requests produced by that
script from templates, labelled by a hidden rule plus noise. So the shipped model
imitates that rule; it does not know which answers the small model actually gets wrong.
It demonstrates the mechanism (features, weights file, threshold calibrated to a target
large-tier share, retraining script) and is a starting point for training on real
labels (e.g. requests where the small tier's answer was rejected or escalated).

The threshold is calibrated to ``target_large_share``: the weights file carries score
quantiles on the training distribution, and the threshold is the score above which that
share of requests falls. On traffic unlike the training data the share will differ, which is what
``tollgate routing calibrate`` corrects: it sets the threshold from the scores of recent
ledger traffic and writes it to ``routing.state_file``, which every replica applies
(:meth:`LearnedPolicy.apply`, driven by :mod:`gateway.routing.state`).
``tollgate routing train`` refits the weights on feedback labels the same way.
"""

from __future__ import annotations

import bisect
import math
import string
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.config import ConfigError
from gateway.routing.features import Features, Score, check_params, tier_names
from gateway.routing.learned_weights import WEIGHTS
from gateway.routing.pool import EnginePool
from gateway.routing.state import RoutingState

#: Keyword groups counted in the text; the order is part of the feature layout.
GROUPS: Mapping[str, Sequence[str]] = {
    "code": (
        "python", "function", "code", "bug", "debug", "compile", "sql", "regex",
        "algorithm", "implement", "refactor", "stack trace", "exception", "api", "class",
    ),
    "math": (
        "prove", "proof", "theorem", "integral", "equation", "derivative", "probability",
        "calculate", "matrix", "lemma", "solve",
    ),
    "reasoning": (
        "explain why", "step by step", "analyze", "analyse", "compare", "trade-off",
        "trade-offs", "tradeoffs", "design", "architecture", "plan", "evaluate", "pros and cons",
    ),
    "simple": (
        "translate", "summarize", "summarise", "hello", "hi", "thanks", "thank you",
        "define", "what is", "list", "rewrite", "spell", "capital of", "synonym",
    ),
    "creative": ("story", "poem", "essay", "lyrics", "novel", "dialogue"),
}  # fmt: skip

#: Bytes kept in words (lowercase ASCII letters, digits, ' and -); the rest separate.
_KEEP = bytes(c if chr(c) in string.ascii_lowercase + string.digits + "'-" else 32
              for c in range(256))  # fmt: skip
#: Per group: its single words (matched as whole words) and its multi-word phrases.
_WORDS: tuple[frozenset[bytes], ...] = tuple(
    frozenset(w.encode() for w in words if " " not in w) for words in GROUPS.values()
)
_PHRASES: tuple[tuple[str, ...], ...] = tuple(
    tuple(w for w in words if " " in w) for words in GROUPS.values()
)
FEATURE_NAMES: tuple[str, ...] = (
    "bias",
    "log_prompt_tokens",
    "log_max_tokens",
    "log_messages",
    "has_tools",
    "json_mode",
    *(f"kw_{g}" for g in GROUPS),
    "code_fence",
    "log_text_chars",
)
SCAN_CHARS = 1024


def featurize(f: Features) -> list[float]:
    """The model's input vector for one request (same layout as FEATURE_NAMES).

    Keyword features count the *distinct* words of a group present (plus its phrases),
    capped at 3.
    """
    text = f.text[:SCAN_CHARS]
    hits = [0] * len(GROUPS)
    if text:
        # All C-level work (a byte table, split, set intersections, substring search):
        # several times cheaper than a keyword-alternation regex or re.findall.
        lowered = text.lower()
        present = set(lowered.encode(errors="ignore").translate(_KEEP).split())
        for g, (words, phrases) in enumerate(zip(_WORDS, _PHRASES, strict=True)):
            hits[g] = len(present & words) + sum(1 for p in phrases if p in lowered)
    return [
        1.0,
        math.log1p(f.prompt_tokens) / 8.0,
        math.log1p(f.max_tokens) / 8.0,
        math.log1p(f.messages) / 4.0,
        1.0 if f.has_tools else 0.0,
        1.0 if f.json_mode else 0.0,
        *(min(h, 3) / 3.0 for h in hits),
        1.0 if "```" in text else 0.0,
        math.log1p(len(f.text)) / 10.0,
    ]


def probability(weights: Sequence[float], x: Sequence[float]) -> float:
    z = sum(w * v for w, v in zip(weights, x, strict=True))
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def threshold_for_share(quantiles: Sequence[float], share: float) -> float:
    """The score above which ``share`` of the training distribution lies."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"routing.params.target_large_share: {share} is not within [0, 1]")
    pos = (1.0 - share) * (len(quantiles) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(quantiles) - 1)
    return quantiles[lo] + (quantiles[hi] - quantiles[lo]) * (pos - lo)


class LearnedPolicy:
    """Large tier when the model's P(large needed) is at or above the threshold."""

    PARAMS: ClassVar[frozenset[str]] = frozenset(
        {"small_tier", "large_tier", "target_large_share", "threshold"}
    )

    def __init__(self, params: Mapping[str, Any], weights: Mapping[str, Any] = WEIGHTS) -> None:
        check_params("learned", params, self.PARAMS)
        if tuple(weights["features"]) != FEATURE_NAMES:
            raise ConfigError("routing: the learned weights do not match this feature layout")
        self.small, self.large = tier_names(params)
        self.weights = tuple(float(w) for w in weights["weights"])
        quantiles = [float(q) for q in weights["quantiles"]]
        if "threshold" in params:
            self.threshold = float(params["threshold"])
        else:
            share = float(params.get("target_large_share", weights["default_large_share"]))
            self.threshold = threshold_for_share(quantiles, share)
        self._quantiles = quantiles
        #: Where the weights came from (the shipped file, or a state file's training run).
        self.trained_on = str(weights.get("trained_on", "unknown"))

    def apply(self, state: RoutingState) -> None:
        """Take a calibrated threshold (and trained weights, if any) from a state file."""
        if state.weights is not None:
            if len(state.weights) != len(FEATURE_NAMES):
                raise ConfigError(
                    f"routing state: {len(state.weights)} weights, the model has "
                    f"{len(FEATURE_NAMES)} features"
                )
            self.weights = state.weights
            self.trained_on = state.trained_on or "routing state file"
        self.threshold = state.threshold

    def score(self, f: Features) -> float:
        return probability(self.weights, featurize(f))

    def expected_large_share(self) -> float:
        """The share of the training distribution at or above the threshold."""
        i = bisect.bisect_left(self._quantiles, self.threshold)
        return 1.0 - i / (len(self._quantiles) - 1)

    def choose_scored(self, f: Features, pool: EnginePool) -> tuple[str, str, Score | None]:
        x = featurize(f)
        p = probability(self.weights, x)
        score = Score(p, tuple(x[1:]))
        if p >= self.threshold:
            return self.large, "learned:large", score
        return self.small, "learned:small", score

    def choose(self, f: Features, pool: EnginePool) -> tuple[str, str]:
        tier, reason, _ = self.choose_scored(f, pool)
        return tier, reason


def vector(features: Sequence[float]) -> list[float]:
    """The model's input from a recorded :class:`Score`'s features (the bias put back)."""
    return [1.0, *features]
