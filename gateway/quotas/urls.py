"""The Redis URL forms ``quotas.redis_url`` accepts, parsed in one place.

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS;
  ``?ssl_cert_reqs=none`` skips verification) and ``unix:///path/to/socket[?db=N]``:
  one standalone Redis, exactly as redis-py reads them.
* ``redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/service_name[/db]``:
  a Redis behind Sentinel. The hosts are the sentinels (port 26379 by default), the
  path names the monitored service (``sentinel monitor <service_name> ...``) and may
  end with the database. The credentials are the data nodes'; sentinels that need
  their own take ``?sentinel_password=...`` (and ``sentinel_username=``). This is the
  form of the ``redis-sentinel-url`` package (Flask-Redis-Sentinel, Celery's docs use
  it too), close to Lettuce's ``redis-sentinel://``. ``?wait_replicas=N``: every write
  is confirmed only once N replicas have it (``WAIT``), so a failover cannot lose it;
  see :mod:`gateway.quotas.sentinel` for the trade.
* ``redis+cluster://[[user]:password@]host1[:port1][,host2[:port2]...]``: Redis Cluster;
  the hosts are seed nodes (any reachable one gives the slot map). Database 0 only,
  as Cluster has no other. ``?wait_replicas=N`` as for Sentinel (``WAIT`` goes to each
  primary a batch wrote to).

TLS is for standalone URLs only (``rediss://``); the sentinel and cluster forms are
plain TCP. Messages never repeat the URL: it may hold a password.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect to one Redis, from a redis-py style URL: ``redis://
    [user:pass@]host[:port][/db]``, ``rediss://...`` (TLS; ``?ssl_cert_reqs=none``
    skips verification) or ``unix:///path/to/socket[?db=N]``."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("a Redis URL starts with redis://, rediss:// or unix://")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        db_text = query.get("db") or (parts.path.strip("/") if parts.scheme != "unix" else "")
        context = None
        if parts.scheme == "rediss":
            context = ssl.create_default_context()
            if query.get("ssl_cert_reqs", "").lower() in ("none", "cert_none"):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return cls(
            host=unquote(parts.hostname or "localhost"),
            port=parts.port or 6379,
            path=unquote(parts.path) if parts.scheme == "unix" else None,
            db=_db(db_text),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            ssl=context,
        )

    def at(self, host: str, port: int) -> RedisTarget:
        """The same credentials and database at another address."""
        return RedisTarget(host, port, None, self.db, self.username, self.password, self.ssl)


@dataclass(frozen=True)
class SentinelTarget:
    """A ``redis+sentinel://`` URL: the sentinels, the service, and the primary's
    credentials and database (as :class:`RedisTarget` with no address yet)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    primary: RedisTarget
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    wait_replicas: int = 0

    @classmethod
    def parse(cls, url: str) -> SentinelTarget:
        scheme, user, password, hosts, path, query = _split_multi(url, SENTINEL_PORT)
        if scheme != "redis+sentinel":
            raise ValueError("a Sentinel URL starts with redis+sentinel://")
        segments = [s for s in path.split("/") if s]
        if not segments or len(segments) > 2:
            raise ValueError("a Sentinel URL's path is /service_name or /service_name/db")
        return cls(
            sentinels=hosts,
            service=unquote(segments[0]),
            primary=RedisTarget(
                db=_db(segments[1] if len(segments) == 2 else query.get("db", "")),
                username=user,
                password=password,
            ),
            sentinel_username=query.get("sentinel_username"),
            sentinel_password=query.get("sentinel_password"),
            wait_replicas=_wait(query),
        )


@dataclass(frozen=True)
class ClusterTarget:
    """A ``redis+cluster://`` URL: seed nodes and the credentials of every node."""

    seeds: tuple[tuple[str, int], ...]
    node: RedisTarget
    wait_replicas: int = 0

    @classmethod
    def parse(cls, url: str) -> ClusterTarget:
        scheme, user, password, hosts, path, query = _split_multi(url, 6379)
        if scheme != "redis+cluster":
            raise ValueError("a Cluster URL starts with redis+cluster://")
        if _db(path.strip("/") or query.get("db", "")) != 0:
            raise ValueError("Redis Cluster has only database 0")
        return cls(hosts, RedisTarget(username=user, password=password), _wait(query))


AnyTarget = RedisTarget | SentinelTarget | ClusterTarget


def parse_url(url: str) -> AnyTarget:
    """Any accepted form (see the module docstring); ValueError names what is wrong."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "redis+sentinel":
        return SentinelTarget.parse(url)
    if scheme == "redis+cluster":
        return ClusterTarget.parse(url)
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget.parse(url)
    raise ValueError(
        "a Redis URL starts with redis://, rediss://, unix://, redis+sentinel:// "
        "or redis+cluster://"
    )


def _wait(query: dict[str, str]) -> int:
    try:
        wait = int(query.get("wait_replicas", "0"))
    except ValueError:
        raise ValueError("wait_replicas must be a number") from None
    if wait < 0:
        raise ValueError("wait_replicas must be 0 or more")
    return wait


def _db(text: str) -> int:
    try:
        return int(text or 0)
    except ValueError:
        raise ValueError(f"the Redis database must be a number, not {text!r}") from None


def _split_multi(
    url: str, default_port: int
) -> tuple[str, str | None, str | None, tuple[tuple[str, int], ...], str, dict[str, str]]:
    """scheme, user, password, hosts, path, query of a URL with a comma list of hosts
    (which :func:`urllib.parse.urlsplit` cannot read: it allows one port)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("not a URL")
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    user = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        name, colon, secret = auth.partition(":")
        user = unquote(name) or None
        password = unquote(secret) if colon else None
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, tail = item[1:].partition("]")
            port_text = tail.removeprefix(":")
        else:
            host, _, port_text = item.partition(":")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ValueError(f"a port must be a number, not {port_text!r}") from None
        hosts.append((unquote(host) or "localhost", port))
    if not hosts:
        raise ValueError("the URL names no host")
    query = {k: v[-1] for k, v in parse_qs(query_text).items()}
    return scheme.lower(), user, password, tuple(hosts), slash + path, query
