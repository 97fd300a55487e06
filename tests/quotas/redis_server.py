"""Moved to :mod:`tests.support.redis_server`; kept so existing imports still work."""

from tests.support.redis_server import RedisServer

__all__ = ["RedisServer"]
