"""A short soak: the gateway's memory does not grow with the request count."""

from __future__ import annotations

from bench.soak import MIX, run


def test_memory_stays_flat_under_a_mixed_misbehaving_load() -> None:
    res = run(duration_s=30, concurrency=16)
    s = res.summary()
    assert s["requests"] >= 2000, s
    assert all(n > 0 for n in s["by_kind"].values()) and set(s["by_kind"]) == set(MIX)
    # Every refusal is a clean HTTP answer: no 500s, no dropped connections.
    assert not [k for k in s["statuses"] if k == "500" or not k.isdigit()], s["statuses"]
    assert {"200", "400", "401", "404", "429"} <= set(s["statuses"]), s["statuses"]
    # After warm-up, 1,500+ requests may not add more than 8 MiB (about 5 KiB each):
    # a per-request leak of a response body, a task or a cache entry would.
    assert s["growth_after_warmup_kib"] < 8 * 1024, s
