"""The multiplexed Redis connection, against a real redis-server."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.quotas.link import LinkError, RedisLink, RedisTarget, ReplyError
from tests.quotas.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
async def link(redis_url: str) -> AsyncIterator[RedisLink]:
    made = RedisLink(redis_url, timeout_s=0.5, connect_timeout_s=2.0)
    yield made
    await made.aclose()


async def test_replies_come_back_in_order_with_errors_in_place(link: RedisLink) -> None:
    assert await link.call("PING") == b"PONG"
    replies = await link.call_many(
        [("SET", "a", 1), ("GET", "a"), ("INCRBY", "n", 5), ("HGET", "a", "f"), ("GET", "nope")]
    )
    assert replies[:3] == [b"OK", b"1", 5]
    assert isinstance(replies[3], ReplyError) and replies[3].code == "WRONGTYPE"
    assert replies[4] is None
    with pytest.raises(ReplyError) as caught:
        await link.call("EVALSHA", "0" * 40, 0)
    assert caught.value.code == "NOSCRIPT"


async def test_concurrent_calls_share_one_connection(
    link: RedisLink, redis_server: RedisServer
) -> None:
    before = int(redis_server.client().info("clients")["connected_clients"])
    results = await asyncio.gather(*(link.call("INCR", "hits") for _ in range(2000)))
    # Every caller got its own reply: the increments are 1..2000, each exactly once.
    assert sorted(results) == list(range(1, 2001))
    after = int(redis_server.client().info("clients")["connected_clients"])
    assert after - before == 1


async def test_a_cancelled_call_does_not_shift_the_replies_of_later_ones(
    link: RedisLink,
) -> None:
    await link.call_many([("SET", "x", "for-x"), ("SET", "y", "for-y")])
    # A blocking pop holds the connection's next replies back; its caller gives up first.
    slow = asyncio.ensure_future(link.call("BLPOP", "empty-list", "0.1"))
    await asyncio.sleep(0.02)
    slow.cancel()
    assert await link.call("GET", "y") == b"for-y"
    assert await link.call("GET", "x") == b"for-x"


async def test_a_hung_redis_fails_waiting_calls_within_the_timeout_then_recovers(
    redis_server: RedisServer, redis_url: str
) -> None:
    link = RedisLink(redis_url, timeout_s=0.2, connect_timeout_s=1.0)
    try:
        assert await link.call("PING") == b"PONG"
        redis_server.pause()
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(link.call("INCR", "k") for _ in range(5)), return_exceptions=True
            )
            waited = time.monotonic() - started
        finally:
            redis_server.resume()
        assert all(isinstance(r, LinkError) for r in results)
        assert "in time" in str(results[0])
        assert 0.2 <= waited < 0.6  # the timeout, plus at most a watchdog period
        assert await link.call("PING") == b"PONG"  # reconnected
    finally:
        await link.aclose()


async def test_a_restarted_redis_is_reconnected_to(
    redis_server: RedisServer, redis_url: str
) -> None:
    link = RedisLink(redis_url, timeout_s=0.5, connect_timeout_s=1.0)
    try:
        await link.call("SET", "persisted", "yes")
        redis_server.kill()
        with pytest.raises(LinkError):
            await link.call("GET", "persisted")
        with pytest.raises(LinkError, match="Cannot connect"):
            await link.call("GET", "persisted")
        redis_server.start()
        assert await link.call("GET", "persisted") == b"yes"
    finally:
        await link.aclose()


async def test_calls_beyond_the_in_flight_cap_fail_at_once(redis_url: str) -> None:
    link = RedisLink(redis_url, timeout_s=0.5, connect_timeout_s=1.0, max_in_flight=10)
    try:
        await link.call("PING")
        results = await asyncio.gather(
            *(link.call("PING") for _ in range(15)), return_exceptions=True
        )
        assert results[:10] == [b"PONG"] * 10
        assert all(isinstance(r, LinkError) for r in results[10:])
        assert await link.call("PING") == b"PONG"
    finally:
        await link.aclose()


async def test_password_and_database_from_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "auth").start()
    url = f"redis://127.0.0.1:{server.port}"
    try:
        admin = server.client()
        admin.config_set("requirepass", "s3cret")
        good = RedisLink(f"redis://:s3cret@127.0.0.1:{server.port}/3", timeout_s=0.5,
                         connect_timeout_s=1.0)  # fmt: skip
        await good.call("SET", "where", "db3")
        await good.aclose()
        check = RedisLink(f"redis://default:s3cret@127.0.0.1:{server.port}/0", timeout_s=0.5,
                          connect_timeout_s=1.0)  # fmt: skip
        assert await check.call("GET", "where") is None
        assert await check.call_many([("SELECT", 3), ("GET", "where")]) == [b"OK", b"db3"]
        await check.aclose()
        wrong = RedisLink(url.replace("//", "//:nope@"), timeout_s=0.5, connect_timeout_s=1.0)
        with pytest.raises(LinkError, match="refused the handshake"):
            await wrong.call("PING")
        await wrong.aclose()
    finally:
        server.stop()


def test_urls_parse_as_redis_py_reads_them() -> None:
    t = RedisTarget.parse("redis://user:p%40ss@cache.internal:6380/2")
    assert (t.host, t.port, t.db, t.username, t.password) == (
        "cache.internal", 6380, 2, "user", "p@ss",
    )  # fmt: skip
    assert t.ssl is None and t.path is None
    assert RedisTarget.parse("redis://localhost").port == 6379
    assert RedisTarget.parse("redis://h/0?db=5").db == 5
    unix = RedisTarget.parse("unix:///run/redis.sock?db=1")
    assert (unix.path, unix.db) == ("/run/redis.sock", 1)
    tls = RedisTarget.parse("rediss://h:6390?ssl_cert_reqs=none")
    assert tls.ssl is not None and tls.ssl.verify_mode == ssl.CERT_NONE
    assert RedisTarget.parse("rediss://h").ssl.verify_mode == ssl.CERT_REQUIRED  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="starts with"):
        RedisTarget.parse("http://h:6379")
    with pytest.raises(ValueError, match="must be a number"):
        RedisTarget.parse("redis://h/zero")
