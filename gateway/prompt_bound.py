"""Prompt-token bounds for admission: what is reserved can never be below the engine's count.

Admission reserves prompt tokens plus ``max_tokens`` before dispatch and settles to the
engine's usage after. An estimate that can be low lets spend pass the budget (issue 13:
9 tokens reserved, 20 counted, a budget overspent by 2% across three replicas), so each
upstream model gets one of two counters, chosen once at start-up and logged:

* :class:`TemplateCount` -- ``exact: tokenizer X + chat template``. The served model's
  tokenizer and chat template are configured (``engines[].tokenizer``), so the prompt is
  rendered as vLLM renders it (transformers' sandboxed jinja environment, the same
  globals and ``tojson``) and tokenized whole (chat: without special tokens, vLLM's
  default; completions and embeddings: with them). A request this cannot reproduce (its
  own ``chat_template``, content parts, a template that raises) takes the model's byte
  bound instead, whose constants are then also measured from the template.
* :class:`ByteBound` -- ``bound: utf-8 bytes + N per message + P per prompt``. No
  tokenizer, or one without a template. The count is the UTF-8 bytes of every string the
  engine may render (roles, contents, names, tool calls), plus ``N`` per message and
  ``P`` per prompt for what the template adds, plus tools.

Why the byte bound cannot be low: the engine's count is the tokens of the rendered text.
Its special tokens (``<|im_start|>``...) are template text, not client text; every other
token of a byte-level BPE (GPT-2/Llama-3/Qwen/SmolLM2 style) or of a SentencePiece
tokenizer with byte fallback covers at least one byte of the text, so a rendered prompt
has at most (its non-special bytes + its special tokens) tokens. The client's bytes are
counted one for one; what remains is the template's own text, bounded in that same unit
(bytes + special tokens, plus SentencePiece's dummy "▁" prefix per segment):

==========  ===================================================  ========================
template    per message (besides role and content)               per prompt (gen. prompt,
                                                                 default system prompt)
==========  ===================================================  ========================
ChatML      <|im_start|> <|im_end|> + 2 newlines = 4             SmolLM2 ≤ 87, Qwen2.5 ≤ 90
Llama 3     3 specials + "\\n\\n" = 5                              Llama 3.1 dates ≤ 88
Gemma       2 specials + 2 newlines = 4 (+1 dummy prefix)        ≤ 16
Mistral     [INST] [/INST] </s> + 2 spaces = 5 (+1 prefix)       BOS ≤ 2
==========  ===================================================  ========================

hence ``N = 8`` and ``P = 128``. Assumptions, stated: the tokenizer's normalizer does not
expand text (NFKC, as in T5-style tokenizers, can: "ﷺ" is 3 bytes and 18 letters), the
template's default system prompt stays under ~120 bytes, and tools are rendered as JSON
at most 4-space indented after a preamble of at most ``TOOLS_PREAMBLE`` tokens. Images
and audio are not bounded (their token count depends on the model); text-only engines
refuse them. Configure the tokenizer to get the exact count instead.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from gateway.protocol import Endpoint, ParsedRequest

#: Template text around one message, besides its role and content (see the table above).
BOUND_PER_MESSAGE = 8
#: Template text once per prompt: generation prompt, BOS, a default system prompt.
BOUND_PER_PROMPT = 128
#: Special tokens one completions/embeddings prompt may get (BOS, EOS).
BOUND_PER_TEXT = 2
#: A template's text introducing tools ("You have access to the following functions...").
TOOLS_PREAMBLE = 512


class Count(NamedTuple):
    """Prompt tokens: ``upper`` can never be below the engine's count; ``lower`` never
    above it (equal when exact)."""

    upper: int
    lower: int

    @property
    def exact(self) -> bool:
        return self.upper == self.lower


class PromptBound(Protocol):
    """One upstream model's way to bound a request's prompt tokens."""

    def describe(self) -> str: ...

    def count(self, req: ParsedRequest) -> Count: ...


@dataclass(frozen=True, slots=True)
class ByteBound:
    """UTF-8 bytes of what the engine renders, plus the template's own text."""

    per_message: int = BOUND_PER_MESSAGE
    per_prompt: int = BOUND_PER_PROMPT

    def describe(self) -> str:
        return f"bound: utf-8 bytes + {self.per_message} per message + {self.per_prompt} per prompt"

    def count(self, req: ParsedRequest) -> Count:
        raw = req.raw
        if req.endpoint is Endpoint.CHAT:
            messages = raw.get("messages") or ()
            total = self.per_prompt + self.per_message * len(messages) + _leaf_bytes(messages)
            tools = raw.get("tools")
            if tools:
                total += TOOLS_PREAMBLE + len(json.dumps(tools, indent=4, ensure_ascii=False))
            return Count(total, 0)
        field = raw.get("prompt") if req.endpoint is Endpoint.COMPLETIONS else raw.get("input")
        return _input_count(field, lambda text: len(text.encode()) + BOUND_PER_TEXT)


def _leaf_bytes(value: Any) -> int:
    """Bytes of every string (and number) in a JSON value: what a template could render."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, dict):
        return sum(_leaf_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_leaf_bytes(v) for v in value)
    return 0 if value is None else len(str(value))


def _input_count(value: Any, per_text: Any) -> Count:
    """Completions ``prompt`` / embeddings ``input``: text(s) or token ids (exact)."""
    if isinstance(value, str):
        return Count(per_text(value), 0)
    if isinstance(value, list):
        if value and all(type(v) is int for v in value):
            return Count(len(value), len(value))
        upper = lower = 0
        for v in value:
            c = _input_count(v, per_text)
            upper, lower = upper + c.upper, lower + c.lower
        return Count(upper, lower)
    return Count(0, 0)


class _Tokenizer(Protocol):
    def encode(self, sequence: Any, /, *, add_special_tokens: bool = ...) -> Any: ...


def template_environment() -> Any:
    """A jinja environment as transformers builds it for ``apply_chat_template``."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, **kw: Any) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)

    def strftime_now(fmt: str) -> str:
        return dt.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


class TemplateCount:
    """The exact count: the chat template rendered per request, tokenized whole."""

    def __init__(
        self,
        tokenizer: _Tokenizer,
        template: str,
        config: dict[str, Any],
        name: str,
        fallback: ByteBound,
    ) -> None:
        self._tok = tokenizer
        self._template = template_environment().from_string(template)
        self._specials = special_tokens(config)
        self._name = name
        self.fallback = fallback

    def describe(self) -> str:
        return f"exact: tokenizer {self._name} + chat template (else {self.fallback.describe()})"

    def render(self, messages: Any, **kwargs: Any) -> str:
        text: str = self._template.render(messages=messages, **self._specials, **kwargs)
        return text

    def count(self, req: ParsedRequest) -> Count:
        raw = req.raw
        if req.endpoint is not Endpoint.CHAT:
            field = raw.get("prompt") if req.endpoint is Endpoint.COMPLETIONS else raw.get("input")
            return _input_count(field, self._exact_text)
        messages = raw.get("messages") or ()
        extra = raw.get("chat_template_kwargs") or {}
        plain = all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
        if not plain or "chat_template" in raw or not isinstance(extra, dict):
            return self.fallback.count(req)
        try:
            text = self.render(
                messages,
                tools=raw.get("tools"),
                add_generation_prompt=raw.get("add_generation_prompt", True) is not False,
                **{k: v for k, v in extra.items() if isinstance(k, str) and k != "messages"},
            )
        except Exception:  # the engine will likely refuse it too; reserve the bound meanwhile
            return self.fallback.count(req)
        specials = raw.get("add_special_tokens") is True
        n = len(self._tok.encode(text, add_special_tokens=specials).ids)
        return Count(n, n)

    def _exact_text(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=True).ids)


def special_tokens(config: dict[str, Any]) -> dict[str, str]:
    """``bos_token``, ``eos_token``...: what transformers hands the template."""
    found = {}
    for key, value in config.items():
        if isinstance(value, dict):
            value = value.get("content")
        if key.endswith("_token") and isinstance(value, str):
            found[key] = value
    return found


def chat_template(directory: Path) -> tuple[str, dict[str, Any]] | None:
    """The model's chat template and tokenizer config, from its directory, if present."""
    import orjson

    cfg_file = directory / "tokenizer_config.json"
    cfg: dict[str, Any] = orjson.loads(cfg_file.read_bytes()) if cfg_file.is_file() else {}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    jinja_file = directory / "chat_template.jinja"
    if not isinstance(template, str) and jinja_file.is_file():
        template = jinja_file.read_text()
    return (template, cfg) if isinstance(template, str) else None


#: Probe conversations: what a template adds around one and three messages.
_ONE = [{"role": "user", "content": "hello"}]
_THREE = [*_ONE, {"role": "assistant", "content": "hi there"}, {"role": "user", "content": "bye"}]


def measured_byte_bound(counter: TemplateCount) -> ByteBound:
    """The byte bound's constants for this template: its added text in bytes (specials
    counted as their full string, more than the one token each is), never below the
    defaults."""

    def added(messages: list[dict[str, str]]) -> int:
        text = counter.render(messages, add_generation_prompt=True)
        return len(text.encode()) - _leaf_bytes(messages)

    one, three = added(_ONE), added(_THREE)
    per_message = max(BOUND_PER_MESSAGE, math.ceil((three - one) / 2) + 2)
    per_prompt = max(BOUND_PER_PROMPT, one - per_message + 4)
    return ByteBound(per_message, per_prompt)
