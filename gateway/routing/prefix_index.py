"""An approximate view of each replica's prefix cache: what this gateway sent where.

vLLM's automatic prefix caching keeps whole blocks of tokens, each identified by a hash
chained over every block before it, and reuses the longest run of cached blocks from the
start of the prompt. :func:`prefix_blocks` does the same over characters: the request's
conversation (roles and texts, in order) is cut into ``block_chars`` chunks and each
full chunk gets a hash chained over the ones before it, so two requests share block
``k`` only if they agree on everything up to its end. Conversations that grow turn by
turn keep their earlier blocks; requests sharing a system prompt share its blocks.

:class:`PrefixIndex` remembers, per replica, the blocks of the requests sent there in
an LRU of ``index_blocks`` (about the replica's KV cache). A request's blocks are
touched last to first, so the LRU evicts a chain's tail before its start, like vLLM,
which frees a request's blocks tail first. The hashes are Python's ``hash`` (salted
per process): the index lives in one gateway process and is never shared.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

# Separators that do not occur in normal text: role and content, message and message.
_FIELD = "\x1f"
_RECORD = "\x1e"


def conversation_text(raw: Mapping[str, Any], limit: int) -> str:
    """The request's prompt as one string (at most ``limit`` characters), in order."""
    messages = raw.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        size = 0
        for msg in messages:
            if not isinstance(msg, Mapping):
                break
            content = msg.get("content")
            if isinstance(content, str):
                text = content
            elif isinstance(content, list):
                text = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
            else:
                text = ""
            parts += (str(msg.get("role")), _FIELD, text, _RECORD)
            size += len(text) + 8
            if size >= limit:
                break
        return "".join(parts)[:limit]
    prompt = raw.get("prompt")
    return prompt[:limit] if isinstance(prompt, str) else ""


def prefix_blocks(raw: Mapping[str, Any], block_chars: int, max_blocks: int) -> tuple[int, ...]:
    """Chained hashes of the request's full ``block_chars`` chunks (at most ``max_blocks``).

    A partial last chunk is left out: vLLM caches only full blocks.
    """
    text = conversation_text(raw, block_chars * max_blocks)
    out: list[int] = []
    h = 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        h = hash((h, text[start : start + block_chars]))
        out.append(h)
    return tuple(out)


class PrefixIndex:
    """Per replica, the prefix blocks recently sent there (an LRU of block hashes)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._blocks: dict[str, OrderedDict[int, None]] = {}

    def matched(self, replica: str, blocks: Sequence[int]) -> int:
        """How many of ``blocks``, from the first, the replica was last sent.

        A binary search: a replica's blocks are prefix-closed. Block ``k`` of a chain is
        touched whenever block ``k + 1`` is (every request holding ``k + 1`` holds ``k``),
        and after it, so the LRU never evicts ``k`` while ``k + 1`` stays.
        """
        held = self._blocks.get(replica)
        if not held or not blocks or blocks[0] not in held:
            return 0  # the common miss: one lookup
        lo, hi = 1, len(blocks)  # blocks[:lo] held; blocks[hi:] not
        while lo < hi:
            mid = (lo + hi) // 2
            if blocks[mid] in held:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def matched_each(self, replicas: Sequence[str], blocks: Sequence[int]) -> list[int]:
        """:meth:`matched` for several replicas in one call (the scorer's hot path)."""
        if not blocks:
            return [0] * len(replicas)
        first = blocks[0]
        get = self._blocks.get
        out: list[int] = []
        for name in replicas:
            held = get(name)
            out.append(self.matched(name, blocks) if held and first in held else 0)
        return out

    def record(self, replica: str, blocks: Sequence[int]) -> None:
        """The request with these blocks was sent to ``replica``."""
        if not blocks:
            return
        held = self._blocks.get(replica)
        if held is None:
            held = self._blocks[replica] = OrderedDict()
        # Last to first: the chain's start ends up most recent, so it is evicted last.
        for h in reversed(blocks):
            if h in held:
                held.move_to_end(h)
            else:
                held[h] = None
        while len(held) > self._capacity:
            held.popitem(last=False)

    def size(self, replica: str) -> int:
        held = self._blocks.get(replica)
        return len(held) if held else 0

    def forget(self, replica: str) -> None:
        """Drop a replica's blocks (it left the pool; a new one starts cold)."""
        self._blocks.pop(replica, None)
