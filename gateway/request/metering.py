"""Money and usage for one request: typed usage, cost, counterfactual, the ledger record.

Shared by the request pipeline and the shadow runner. The price model of an engine is
decided in one place (:attr:`Engine.price_model`); usage is parsed once, from the
engine's own ``usage`` object, into :class:`Usage`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from gateway.config import EngineSettings
from gateway.ledger.record import LedgerRecord
from gateway.pricing import PriceBook
from gateway.routing.features import Score
from gateway.tokens import TokenCounter
from gateway.upstream.engine import Engine


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request used, as the engine reported them (or as estimated)."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    @classmethod
    def parse(cls, obj: object) -> Usage | None:
        """The OpenAI ``usage`` object, or None when there is none."""
        if not isinstance(obj, dict):
            return None
        details = obj.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return cls(
            prompt=_int(obj.get("prompt_tokens")),
            completion=_int(obj.get("completion_tokens")),
            cached=_int(cached),
        )

    def as_openai(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.total,
        }


NO_USAGE = Usage()


@dataclass(slots=True)
class Output:
    """What the client was sent so far (for estimating usage when the engine gave none)."""

    chunks: int = 0
    text: list[str] = field(default_factory=list)


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return int(value)
    return 0


def estimate(
    tokens: TokenCounter, engine: Engine, prompt_tokens: int, output: Output, data: object = None
) -> Usage:
    """Usage counted by the gateway, for an engine that reported none.

    The prompt is admission's estimate; the output is the text the client was sent
    (or, for a unary answer, the answer's text), and at least one token per chunk.
    """
    text = "".join(output.text)
    if not text and isinstance(data, dict):
        for c in data.get("choices") or ():
            msg = c.get("message")
            text += (msg.get("content") or "") if isinstance(msg, dict) else (c.get("text") or "")
    completion = output.chunks
    if text:
        completion = max(tokens.count_text(engine.model, text), output.chunks)
    return Usage(prompt=prompt_tokens, completion=completion)


class Meter:
    """Prices usage: what a request costs, and what it would have cost on the reference."""

    def __init__(self, prices: PriceBook, entries_by_tier: dict[str, list[EngineSettings]]):
        self.prices = prices
        self._entries = entries_by_tier
        self.reference = prices.reference_model or self._default_reference()

    def _default_reference(self) -> str | None:
        large = self._entries.get("large")
        if large:
            return large[0].price_model or large[0].model
        return None

    def cost(self, engine: Engine, usage: Usage) -> int:
        model = engine.price_model
        if not self.prices.has(model):
            return 0
        return self.prices.price(model).cost_nusd(usage.prompt, usage.completion, usage.cached)

    def counterfactual(self, usage: Usage, cost_nusd: int, *, routed: bool) -> int:
        """What the request would have cost had routing not chosen its tier.

        Only a request whose tier a policy chose (an ``auto`` model, or a fallback to
        another tier) is compared with the reference tier. A request that named its
        model went where it asked: routing saved nothing on it, so its counterfactual is
        its own cost and its savings are zero.
        """
        if not routed:
            return cost_nusd
        ref = self.reference
        if ref is None or not self.prices.has(ref):
            return 0
        return self.prices.price(ref).cost_nusd(usage.prompt, usage.completion, usage.cached)

    def price_version(self, engine: Engine) -> str:
        model = engine.price_model
        return self.prices.price(model).version if self.prices.has(model) else "unpriced"

    def priced(self, engine: Engine) -> bool:
        return self.prices.has(engine.price_model)

    def output_cost(self, engine: Engine, prompt_tokens: int, completion_tokens: int) -> int:
        """Cost of a partial answer (the mid-stream budget check)."""
        return self.prices.price(engine.price_model).cost_nusd(prompt_tokens, completion_tokens)

    def worst_case(self, tiers: list[str], prompt_tokens: int, max_tokens: int) -> int:
        """The most a request may cost on any tier it can reach (what admission reserves)."""
        worst = 0
        for tier in tiers:
            model = self._dearest_model(tier)
            if model is not None:
                worst = max(worst, self.prices.price(model).cost_nusd(prompt_tokens, max_tokens))
        return worst

    def _dearest_model(self, tier: str) -> str | None:
        best: tuple[object, str] | None = None
        for e in self._entries.get(tier, ()):
            pm = e.price_model or e.model
            if self.prices.has(pm):
                p = self.prices.price(pm)
                key = (p.prompt + p.completion, pm)
                if best is None or key > best:
                    best = key
        return best[1] if best else None


@dataclass(slots=True)
class Charge:
    """One finished request's money, ready for the ledger."""

    usage: Usage
    usage_estimated: bool
    cost_nusd: int
    counterfactual_nusd: int
    price_version: str


def charge(meter: Meter, engine: Engine, usage: Usage, estimated: bool, *, routed: bool) -> Charge:
    cost = meter.cost(engine, usage)
    return Charge(
        usage=usage,
        usage_estimated=estimated,
        cost_nusd=cost,
        counterfactual_nusd=meter.counterfactual(usage, cost, routed=routed),
        price_version=meter.price_version(engine),
    )


@dataclass(slots=True)
class Attribution:
    """Who asked, for what, and where it went: the non-money half of a ledger record."""

    request_id: str
    started_at: dt.datetime
    key_id: str
    key_prefix: str
    team: str | None
    endpoint: str
    requested_model: str
    route_reason: str
    stream: bool
    #: The learned router's score, when it decided.
    route_score: Score | None = None


def ledger_record(
    who: Attribution,
    engine: Engine,
    money: Charge,
    *,
    latency_s: float,
    ttft_s: float | None,
    status: str,
    http_status: int,
    error_code: str | None,
) -> LedgerRecord:
    u = money.usage
    return LedgerRecord(
        request_id=who.request_id,
        started_at=who.started_at,
        finished_at=dt.datetime.now(dt.UTC),
        key_id=who.key_id,
        key_prefix=who.key_prefix,
        team=who.team,
        endpoint=who.endpoint,
        requested_model=who.requested_model,
        engine=engine.name,
        tier=engine.tier,
        upstream_model=engine.model,
        route_reason=who.route_reason,
        stream=who.stream,
        prompt_tokens=u.prompt,
        completion_tokens=u.completion,
        cached_tokens=u.cached,
        usage_estimated=money.usage_estimated,
        latency_ms=round(latency_s * 1000, 3),
        ttft_ms=round(ttft_s * 1000, 3) if ttft_s is not None else None,
        status=status,
        http_status=http_status,
        error_code=error_code,
        cost_nusd=money.cost_nusd,
        counterfactual_nusd=money.counterfactual_nusd,
        price_version=money.price_version,
        route_score=who.route_score.value if who.route_score is not None else None,
        route_features=who.route_score.features if who.route_score is not None else None,
    )
