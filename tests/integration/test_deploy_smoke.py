"""Deployment smoke test: the production config's gateway process, as deployed.

``tollgate serve -c deploy/config/tollgate.yaml`` runs as a child process with the
environment compose and k8s give it (admin token, Redis URL with a password, PostgreSQL
ledger URL, engine API key), in front of stand-in engines that require that key, a real
password-protected redis-server and a real PostgreSQL. Only what cannot be the same
outside a cluster is overridden through ``TOLLGATE_*``: ports, the spill directory, the
price file's mount path, the engines' host:port and their ``tokenizer`` (a path on the
models volume, /models/hf/hub/..., that a pod mounts and this machine lacks: a small
test tokenizer folder stands in, so the gateway loads a tokenizer as in production;
tests/deploy/test_model_pins.py checks the real paths against the pinned revisions and
the mounts). Each entry is otherwise exactly as the YAML has it, DNS discovery
included, resolved by the real resolver.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import psycopg
import pytest
import redis
import yaml
from openai.types.chat import ChatCompletionMessageParam
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from engines.standin.process import StandinProcess
from tests.ledger.pg import PostgresCluster
from tests.quotas.redis_server import RedisServer
from tests.support import ROOT, GatewayProcess, free_port, production_env

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

CONFIG = ROOT / "deploy/config/tollgate.yaml"
ENGINE_KEY = "engine-secret-smoke-0001"
ADMIN_TOKEN = "tg-smoke-admin-token-0001"
REDIS_PASSWORD = "redis-smoke-password"
PG_PASSWORD = "pg-smoke-password"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Redis with requirepass and a PostgreSQL database owned by a password role."""
    redis_server = RedisServer(tmp_path_factory.mktemp("redis"), password=REDIS_PASSWORD).start()
    cluster = PostgresCluster()
    cluster.start()
    try:
        with psycopg.connect(
            host="127.0.0.1", port=cluster.port, user="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE ROLE tollgate LOGIN PASSWORD '{PG_PASSWORD}'")
            conn.execute("CREATE DATABASE tollgate OWNER tollgate")
        yield {
            "redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0",
            "ledger_url": f"postgresql://tollgate:{PG_PASSWORD}@127.0.0.1:{cluster.port}/tollgate",
        }
    finally:
        redis_server.stop()
        cluster.destroy()


def stand_in_tokenizer(folder: Path) -> Path:
    """A tokenizer folder (tokenizer.json) standing in for a snapshot on the models volume."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[UNK]", "hello", "tok1", "tok2", "tok3", "tok4", "tok5"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def engines_at(ports: dict[str, int], tokenizer: Path) -> list[dict[str, Any]]:
    """The production engine entries, with only each URL's host:port moved to a stand-in
    and the tokenizer path (the models volume's) to a local folder."""
    entries: list[dict[str, Any]] = yaml.safe_load(CONFIG.read_text())["engines"]
    for entry in entries:
        parts = urlsplit(entry["url"])
        entry["url"] = f"{parts.scheme}://127.0.0.1:{ports[entry['tier']]}{parts.path}"
        assert entry["tokenizer"].startswith("/models/hf/hub/")  # replaced, not dropped
        entry["tokenizer"] = str(tokenizer)
    return entries


def quota_state(client: redis.Redis) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for key in client.scan_iter("tg:q:*"):
        kind = client.type(key)
        state[key] = client.hgetall(key) if kind == b"hash" else client.get(key)
    return state


def test_production_config_serves_meters_and_records(
    backing: dict[str, str], tmp_path: Path
) -> None:
    yaml_engines = yaml.safe_load(CONFIG.read_text())["engines"]
    models = {e["tier"]: e["model"] for e in yaml_engines}
    small = StandinProcess(model=models["small"], tpot_ms=1, api_key=ENGINE_KEY)
    large = StandinProcess(model=models["large"], tpot_ms=1, api_key=ENGINE_KEY)
    small.start()
    large.start()
    port, admin_port = free_port(), free_port()
    env = production_env(
        redis_url=backing["redis_url"],
        ledger_url=backing["ledger_url"],
        admin_token=ADMIN_TOKEN,
        engine_api_key=ENGINE_KEY,
    ) | {
        "TOLLGATE_SERVER__PORT": str(port),
        "TOLLGATE_SERVER__ADMIN_PORT": str(admin_port),
        "TOLLGATE_LEDGER__SPILL_DIR": str(tmp_path / "spill"),
        "TOLLGATE_PRICING__FILE": str(ROOT / "deploy/config/prices.yaml"),
        "TOLLGATE_ENGINES": json.dumps(
            engines_at(
                {"small": small.port, "large": large.port}, stand_in_tokenizer(tmp_path / "tok")
            )
        ),
    }
    gw = GatewayProcess(CONFIG, port, env, log_dir=tmp_path)
    try:
        gw.start(timeout=60)
        base = gw.base_url
        assert httpx.get(base + "/health/ready", timeout=5).status_code == 200
        names = {row["name"] for row in httpx.get(base + "/health/engines").json()["engines"]}
        assert names == {f"small-127.0.0.1-{small.port}", f"large-127.0.0.1-{large.port}"}
        # The admin API is on its own loopback listener, not on the client port.
        assert httpx.get(base + "/admin/keys", timeout=5).status_code == 404
        admin = f"http://127.0.0.1:{admin_port}/admin"
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        limits = {"rpm": 100, "tpm": 100_000, "budget_daily_usd": 5}
        created = httpx.post(
            admin + "/keys", json={"name": "smoke", "limits": limits}, headers=auth, timeout=10
        )
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        key_id = created.json()["id"]

        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
        quotas = redis.Redis.from_url(backing["redis_url"])
        raw = client.chat.completions.with_raw_response.create(
            model="small", messages=MESSAGES, max_tokens=5
        )
        assert raw.headers["x-tollgate-tier"] == "small"
        assert raw.parse().choices[0].message.content == " tok1 tok2 tok3 tok4 tok5"
        before = quota_state(quotas)
        assert before, "no quota counters in Redis"
        chunks = list(
            client.chat.completions.create(
                model="large",
                messages=MESSAGES,
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == " tok1 tok2 tok3 tok4"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        after = quota_state(quotas)
        assert after != before  # the stream was metered too
        quotas.close()

        with psycopg.connect(backing["ledger_url"]) as conn:
            rows: list[tuple[Any, ...]] = []
            deadline = time.monotonic() + 15
            while len(rows) < 2 and time.monotonic() < deadline:
                rows = conn.execute(
                    "SELECT tier, stream, completion_tokens, cost_nusd FROM ledger_records "
                    "WHERE key_id = %s ORDER BY finished_at",
                    (key_id,),
                ).fetchall()
                conn.commit()
                time.sleep(0.2)
        assert [(r[0], r[1], r[2]) for r in rows] == [("small", False, 5), ("large", True, 4)]
        assert all(r[3] > 0 for r in rows)  # priced from deploy/config/prices.yaml

        gw.terminate()
        assert gw.wait(60) == 0
        log = gw.log.read_text()
        assert "Traceback" not in log
        assert "not loaded" not in log  # each engine's tokenizer loaded, as in a pod
    finally:
        gw.stop()
        small.stop()
        large.stop()
