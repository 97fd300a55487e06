"""How a stand-in engine behaves, and the constants its token accounting uses."""

from __future__ import annotations

from dataclasses import dataclass

from engines.standin.faults import NO_FAULT, Fault

DEFAULT_MODEL = "standin-model"
DEFAULT_MAX_TOKENS = 16
CHAT_MESSAGE_OVERHEAD = 4  # role and template markers around each chat message
PROMPT_BOS = 1  # the BOS token vLLM prepends to a text prompt
#: With prompt_count "bytes": a default system prompt and generation header, one token a
#: byte (SmolLM2's template adds 87 bytes and specials when no system message is given).
BYTES_PROMPT_OVERHEAD = 87


@dataclass(frozen=True, slots=True)
class StandinConfig:
    """How a stand-in engine behaves; fixed for its lifetime, except the fault."""

    model: str = DEFAULT_MODEL
    max_model_len: int = 2048
    ttft_ms: float = 0.0
    tpot_ms: float = 0.0
    max_num_seqs: int = 256
    embeddings: bool = False
    embedding_dim: int = 32
    fault: Fault = NO_FAULT
    seed: int | None = None
    #: Like vLLM's ``--api-key``: /v1 requests need ``Authorization: Bearer <key>``.
    api_key: str | None = None
    #: "words" (see count_prompt_tokens) or "bytes": one token per UTF-8 byte of the
    #: roles and texts, plus BYTES_PROMPT_OVERHEAD, the most a byte-level BPE can count.
    prompt_count: str = "words"

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.prompt_count not in ("words", "bytes"):
            raise ValueError("prompt_count must be 'words' or 'bytes'")
        if self.ttft_ms < 0 or self.tpot_ms < 0:
            raise ValueError("ttft_ms and tpot_ms must not be negative")
