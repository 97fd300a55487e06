"""Fixtures that the tests and the benchmarks share: ports, configs, running servers.

* :mod:`tests.support.net`: free ports and polling (``free_port``, ``wait_http``,
  ``wait_for``);
* :mod:`tests.support.configs`: the one gateway config builder (``gateway_config``,
  ``write_config``, ``EngineSpec``, the test key and admin token, ``production_env``);
* :mod:`tests.support.servers`: the gateway in a thread (``serve_in_thread``) or as a
  process (``GatewayProcess``);
* :mod:`tests.support.redis_server` and :mod:`tests.support.postgres`: a real
  redis-server and a throwaway PostgreSQL cluster;
* :mod:`tests.support.fleet`: the fault tests' four stand-in engines and their helpers;
* :mod:`tests.support.preparing`: a fake runner and kernel probe for engine preparation;
* :mod:`tests.support.standin`: the stand-in engine tests' servers, clients and probes;
* :mod:`tests.support.ledger`: ledger records (``make_record``, ``demo_records``) and
  ``ListRecorder``, a recorder that keeps them in memory.

Arrows point one way: ``net`` ← ``configs`` ← ``servers``, and nothing here imports a
test module, so ``bench/`` may import this package and nothing else under ``tests/``.
"""

from tests.support.configs import (
    ADMIN_TOKEN,
    CLIENT_KEY,
    ROOT,
    EngineSpec,
    gateway_config,
    production_env,
    write_config,
)
from tests.support.ledger import ListRecorder, demo_records, make_record, records
from tests.support.net import free_port, wait_for, wait_http
from tests.support.postgres import PostgresCluster
from tests.support.redis_server import RedisServer
from tests.support.servers import GatewayProcess, RunningGateway, engines_health, serve_in_thread

__all__ = [
    "ADMIN_TOKEN",
    "CLIENT_KEY",
    "ROOT",
    "EngineSpec",
    "GatewayProcess",
    "ListRecorder",
    "PostgresCluster",
    "RedisServer",
    "RunningGateway",
    "demo_records",
    "engines_health",
    "free_port",
    "gateway_config",
    "make_record",
    "production_env",
    "records",
    "serve_in_thread",
    "wait_for",
    "wait_http",
    "write_config",
]
