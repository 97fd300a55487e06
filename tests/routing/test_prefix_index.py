"""The approximate prefix index: block hashing of conversations and the per-replica LRU."""

from __future__ import annotations

from typing import Any

from gateway.routing.prefix_index import PrefixIndex, conversation_text, prefix_blocks

SYSTEM = {"role": "system", "content": "You are a careful travel agent. " * 20}


def convo(*turns: str) -> dict[str, Any]:
    msgs: list[dict[str, str]] = [SYSTEM]
    for i, text in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"messages": msgs}


def test_later_turns_extend_earlier_blocks() -> None:
    first = prefix_blocks(convo("plan a trip to Lisbon " * 10), 64, 128)
    turns = ("plan a trip to Lisbon " * 10, "sure! " * 30, "and Porto?")
    later = prefix_blocks(convo(*turns), 64, 128)
    assert len(first) >= 10 and len(later) > len(first)
    assert later[: len(first)] == first


def test_shared_system_prompt_shares_only_its_blocks() -> None:
    a = prefix_blocks(convo("write a poem about tides " * 5), 64, 128)
    b = prefix_blocks(convo("list prime numbers below 100 " * 5), 64, 128)
    shared = len(conversation_text({"messages": [SYSTEM]}, 10_000)) // 64
    assert a[:shared] == b[:shared]
    assert a[shared + 1 :] and set(a[shared + 1 :]).isdisjoint(b)


def test_partial_blocks_and_caps() -> None:
    assert prefix_blocks({"prompt": "x" * 63}, 64, 8) == ()
    assert len(prefix_blocks({"prompt": "x" * 64 * 20}, 64, 8)) == 8
    assert prefix_blocks({"messages": "nonsense"}, 64, 8) == ()
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 200}]}]}
    assert len(prefix_blocks(parts, 64, 8)) == 3


def test_index_matches_the_longest_run_from_the_start() -> None:
    idx = PrefixIndex(capacity=100)
    blocks = (1, 2, 3, 4)
    assert idx.matched("r0", blocks) == 0
    idx.record("r0", blocks[:2])
    assert idx.matched("r0", blocks) == 2
    assert idx.matched("r0", (1, 2, 30, 40)) == 2  # a chain that parts after block 2
    assert idx.matched("r0", (9, 10)) == 0
    idx.record("r2", blocks)
    assert idx.matched_each(["r0", "r1", "r2"], blocks) == [2, 0, 4]
    assert idx.matched_each(["r0", "r2"], ()) == [0, 0]
    assert idx.matched("r1", blocks) == 0


def test_lru_evicts_tails_before_starts_and_forgets_replicas() -> None:
    idx = PrefixIndex(capacity=4)
    idx.record("r0", (1, 2, 3))
    idx.record("r0", (10, 11, 12))  # over capacity: the oldest chain's tail goes first
    assert idx.size("r0") == 4
    assert idx.matched("r0", (1, 2, 3)) == 1
    assert idx.matched("r0", (10, 11, 12)) == 3
    idx.forget("r0")
    assert idx.size("r0") == 0 and idx.matched("r0", (10,)) == 0
