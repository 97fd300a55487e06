"""Price catalog: USD per 1M tokens per model, with effective dates and versions.

All money is integer nano-USD (1e-9 USD) so sums are exact and reconcile to the cent;
a request's cost is rounded half-up to the nano-dollar once, and that number is what
quotas, the ledger and reports all use.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import ConfigError, describe_validation_error

NANO = Decimal(1_000_000_000)
_PER_TOKEN = Decimal(1_000_000)  # prices are per 1M tokens


class PriceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    effective: dt.date
    prompt_per_mtok: Decimal = Field(ge=0)
    completion_per_mtok: Decimal = Field(ge=0)
    cached_prompt_per_mtok: Decimal | None = Field(None, ge=0)
    #: Where the price came from (e.g. "derived: 2.10 USD/GPU-h x 1 GPU / 2400 tok/s").
    source: str | None = None

    @property
    def version(self) -> str:
        return f"{self.model}@{self.effective.isoformat()}"


class PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prices: list[PriceEntry]
    #: The tier whose price is the counterfactual ("had it gone to large").
    reference_model: str | None = None


@dataclass(frozen=True, slots=True)
class Price:
    version: str
    prompt: Decimal
    completion: Decimal
    cached_prompt: Decimal
    #: The three prices as integers at one decimal scale (10**_places), so a cost is
    #: integer arithmetic: exact, and several times cheaper than Decimal on the hot path.
    _scaled: tuple[int, int, int] = field(init=False, repr=False, compare=False)
    _places: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prices = (self.prompt, self.cached_prompt, self.completion)
        places = max(0, *(-int(p.as_tuple().exponent) for p in prices))
        scale = Decimal(10) ** places
        scaled = tuple(int(p * scale) for p in prices)
        object.__setattr__(self, "_scaled", scaled)
        object.__setattr__(self, "_places", places)

    def cost_nusd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """USD per 1M tokens x tokens, in nano-USD, rounded half-up once."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        p, cp, c = self._scaled
        # nano-USD = USD-per-1M x tokens x 1e9 / 1e6 = (scaled sum) x 1000 / 10**places
        total = (p * (prompt_tokens - cached) + cp * cached + c * completion_tokens) * 1000
        places = self._places
        if places <= 0:
            return total
        unit: int = 10**places
        q, r = divmod(total, unit)
        return q + 1 if 2 * r >= unit else q


class PriceBook:
    """Resolves the price in force for a model at a time.

    The prices in force "now" are cached per model (the hot path is a dict lookup) and
    recomputed when the clock passes the next ``effective`` date, so a long-running
    gateway switches to a new price at midnight UTC of its effective day.
    """

    def __init__(
        self,
        entries: list[PriceEntry],
        reference_model: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._by_model: dict[str, list[PriceEntry]] = {}
        seen: set[str] = set()
        for e in sorted(entries, key=lambda e: e.effective):
            if e.version in seen:
                raise ConfigError(f"pricing: two prices for {e.model!r} from {e.effective}")
            seen.add(e.version)
            self._by_model.setdefault(e.model, []).append(e)
        self.reference_model = reference_model
        self._clock = clock
        self._current: dict[str, Price] = {}
        self._refresh_at = -math.inf
        self._refresh()

    def _refresh(self) -> None:
        now = self._clock()
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        current: dict[str, Price] = {}
        upcoming = [e.effective for e in self.entries() if e.effective > today]
        for model in self._by_model:
            price = self._at(model, today)
            if price is not None:
                current[model] = price
        self._current = current
        if upcoming:
            nxt = dt.datetime.combine(min(upcoming), dt.time(), dt.UTC)
            self._refresh_at = nxt.timestamp()
        else:
            self._refresh_at = math.inf

    @classmethod
    def load(cls, path: str | Path) -> PriceBook:
        file = Path(path)
        try:
            data = yaml.safe_load(file.read_text()) or {}
            parsed = PriceFile.model_validate(data)
        except FileNotFoundError:
            raise ConfigError(f"pricing.file: price file not found: {file}") from None
        except ValidationError as exc:
            raise ConfigError(f"pricing.file {file}: " + describe_validation_error(exc)) from None
        return cls(parsed.prices, parsed.reference_model)

    def _at(self, model: str, day: dt.date) -> Price | None:
        chosen = None
        for e in self._by_model.get(model, ()):
            if e.effective <= day:
                chosen = e
        if chosen is None:
            return None
        cached = (
            chosen.cached_prompt_per_mtok
            if chosen.cached_prompt_per_mtok is not None
            else chosen.prompt_per_mtok
        )
        return Price(chosen.version, chosen.prompt_per_mtok, chosen.completion_per_mtok, cached)

    def price(self, model: str, at: dt.datetime | None = None) -> Price:
        """The price in force for ``model`` now (hot path: a dict lookup) or at ``at``."""
        if at is not None:
            found = self._at(model, at.astimezone(dt.UTC).date() if at.tzinfo else at.date())
        else:
            if self._clock() >= self._refresh_at:
                self._refresh()
            found = self._current.get(model)
        if found is None:
            raise KeyError(f"no price for model {model!r}")
        return found

    def has(self, model: str) -> bool:
        if self._clock() >= self._refresh_at:
            self._refresh()
        return model in self._current

    def current_versions(self) -> dict[str, str]:
        """Model -> version of the price in force now."""
        if self._clock() >= self._refresh_at:
            self._refresh()
        return {m: p.version for m, p in self._current.items()}

    def entries(self) -> list[PriceEntry]:
        return [e for es in self._by_model.values() for e in es]


def derive_per_mtok(
    gpu_hourly_usd: Decimal, gpus: int, tokens_per_s: Decimal, utilization: Decimal
) -> Decimal:
    """USD per 1M tokens from hardware cost: hourly x GPUs / 3600 / (tok/s x utilization)."""
    if tokens_per_s <= 0 or utilization <= 0:
        raise ValueError("throughput and utilization must be positive")
    usd_per_s = gpu_hourly_usd * gpus / Decimal(3600)
    return usd_per_s / (tokens_per_s * utilization) * _PER_TOKEN


@dataclass(frozen=True, slots=True)
class DerivedPrice:
    """Per-token prices derived from what the hardware costs and what it served."""

    prompt_per_mtok: Decimal
    completion_per_mtok: Decimal
    #: USD per request at the benchmark's token mix.
    usd_per_request: Decimal
    source: str


def derive_prices(
    *,
    gpu_hourly_usd: Decimal,
    gpus: int,
    requests_per_s: Decimal,
    prompt_tokens: Decimal,
    completion_tokens: Decimal,
    utilization: Decimal = Decimal(1),
    completion_ratio: Decimal = Decimal(3),
    places: int = 6,
    device: str = "GPU",
) -> DerivedPrice:
    """Split the hardware's cost per request into prompt and completion token prices.

    Cost per second is ``hourly x GPUs / 3600``; at ``requests_per_s`` measured by a
    benchmark and a share ``utilization`` of the time busy, one request costs
    ``cost_per_s / (requests_per_s x utilization)``. A completion token is priced
    ``completion_ratio`` times a prompt token (decode is what occupies the GPU), so with
    the benchmark's mean token counts ``P`` and ``C`` per request the prompt price is
    ``usd_per_request / (P + ratio x C)``: the prices bill exactly the hardware cost at
    that mix. Prices are rounded to ``places`` decimals of USD per 1M tokens.
    """
    if gpus < 1:
        raise ValueError("gpus must be at least 1")
    if requests_per_s <= 0 or utilization <= 0 or utilization > 1:
        raise ValueError("requests_per_s must be positive and utilization within (0, 1]")
    if prompt_tokens < 0 or completion_tokens < 0 or prompt_tokens + completion_tokens <= 0:
        raise ValueError("token counts per request must be non-negative and not both zero")
    if completion_ratio <= 0:
        raise ValueError("completion_ratio must be positive")
    usd_per_s = gpu_hourly_usd * gpus / Decimal(3600)
    per_request = usd_per_s / (requests_per_s * utilization)
    weighted = prompt_tokens + completion_ratio * completion_tokens
    prompt = per_request / weighted * _PER_TOKEN
    quantum = Decimal(1).scaleb(-places)
    source = (
        f"derived: {gpu_hourly_usd} USD/{device}-h x {gpus} {device} / {requests_per_s} req/s "
        f"at {utilization:.0%} utilization, {prompt_tokens}+{completion_tokens} tok/req, "
        f"completion = {completion_ratio} x prompt"
    )
    return DerivedPrice(
        prompt_per_mtok=prompt.quantize(quantum, rounding=ROUND_HALF_UP),
        completion_per_mtok=(prompt * completion_ratio).quantize(quantum, rounding=ROUND_HALF_UP),
        usd_per_request=per_request,
        source=source,
    )
