"""Fuzz a served gateway with schemathesis, driven by the gateway's own OpenAPI document.

:func:`fuzz` loads ``/openapi.json`` (admin token), then for every operation draws cases
in both of schemathesis' modes, positive (valid per the schema) and negative (wrong
types, missing fields, out-of-range values), sends them with the right credential (the
client key on ``/v1``, the admin token on ``/admin`` and ``/openapi.json``), and checks:

* no 5xx, and every status, content type, header and body as the document says;
* negative data is refused; an operation that needs a credential refuses a request
  without one;
* no stack trace and no engine URL in any body.

A failed check is recorded as a :class:`Finding` rather than raised, so one run counts
everything (``tests/api/test_fuzz.py`` asserts there are none; ``bench fuzz`` writes
them to a report). A quarter of the positive cases name a configured model instead of a
random string, so requests get past routing to the engine. :data:`EXPLICIT` holds the
inputs that must always be tried, such as ``"n": "2"`` (once a 500).
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engines.standin.process import StandinProcess
from gateway.config import Settings
from gateway.db import make_engine
from gateway.keys import KeyStore
from tests.support.configs import ADMIN_TOKEN, CLIENT_KEY, EngineSpec, gateway_config
from tests.support.servers import RunningGateway

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]
#: Bodies that betray internals: Python tracebacks and frames, exception reprs.
_LEAKS = re.compile(r'Traceback \(most recent call last\)|File "[^"]+", line \d+|\w+Error\(')
_HELLO = [{"role": "user", "content": "hi"}]
#: (operation, body) tried on every run, before the drawn cases.
EXPLICIT: list[tuple[str, dict[str, Any]]] = [
    ("POST /v1/chat/completions", {"model": "small", "messages": _HELLO, "n": "2"}),
    ("POST /v1/completions", {"model": "small", "prompt": "hi", "n": "2"}),
    ("POST /v1/embeddings", {"model": "small", "input": "hi", "n": "2"}),
    ("POST /v1/chat/completions", {"model": "small", "messages": _HELLO, "max_tokens": "8"}),
    ("POST /v1/chat/completions", {"model": "small", "messages": _HELLO, "stream": "yes"}),
]


SMALL_ONLY_KEY = "tg-test-small-only-key-0001"


def fuzz_settings(tmp: Path, standins: Mapping[str, StandinProcess]) -> Settings:
    """Small, large and embed tiers on stand-ins that never fail; no admin lock-out.

    ``standins``: ``small``, ``large`` and ``embed`` (the suite's ``standin_pair``). A
    second key may use ``small`` only. The key store's tables exist.
    """
    specs = [
        EngineSpec("small-0", standins["small"].base_url, "small", "standin-small"),
        EngineSpec("large-0", standins["large"].base_url, "large", "standin-large"),
        EngineSpec(
            "embed-0", standins["embed"].base_url, "embed", "standin-embed", {"embeddings": True}
        ),
    ]
    # The fuzzer runs in the gateway's process and holds the GIL while it draws cases:
    # the loop-lag signal would read that as overload and refuse (503).
    cfg = gateway_config(tmp, specs, quotas={"backend": "local"}, server={"max_loop_lag_ms": 0})
    cfg["auth"]["admin_max_failures"] = 1_000_000  # the fuzzer sends wrong tokens on purpose
    cfg["auth"]["static_keys"].append(
        {"key": SMALL_ONLY_KEY, "name": "small-only", "team": "qa", "models": ["small"]}
    )
    settings = Settings(**cfg)
    engine = make_engine(settings.ledger.url)
    KeyStore(engine).create_tables()
    engine.dispose()
    return settings


def target(gateway: RunningGateway) -> Target:
    """The served gateway as the fuzzer sees it: the test credentials, never-leak URLs."""
    models = [m.name for m in gateway.settings.models]
    engines = [e.url for e in gateway.settings.engines]
    return Target(gateway.base_url, CLIENT_KEY, ADMIN_TOKEN, models, engines)


@dataclass
class Finding:
    """One kind of failure on one operation: how often, and the first example."""

    operation: str
    check: str
    message: str
    example: str
    count: int = 1


@dataclass
class FuzzReport:
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)
    explicit: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    def add_finding(self, operation: str, check: str, message: str, example: str) -> None:
        found = self.findings.get((operation, check))
        if found is None:
            self.findings[(operation, check)] = Finding(operation, check, message, example)
        else:
            found.count += 1


@dataclass
class Target:
    """A served gateway: where, with which credentials, and what must never leak."""

    base_url: str
    client_key: str
    admin_token: str
    models: Sequence[str]
    secrets: Sequence[str] = ()  # engine URLs, for a start

    def headers(self, path: str) -> dict[str, str]:
        if path.startswith("/v1/"):
            return {"authorization": f"Bearer {self.client_key}"}
        if path.startswith("/admin/") or path == "/openapi.json":
            return {"authorization": f"Bearer {self.admin_token}"}
        return {}

    def document(self) -> dict[str, Any]:
        reply = requests.get(
            self.base_url + "/openapi.json", headers=self.headers("/openapi.json"), timeout=10
        )
        reply.raise_for_status()
        doc: dict[str, Any] = reply.json()
        return doc


def fuzz(
    target: Target, *, max_examples: int, derandomize: bool = False, seed: int | None = None
) -> FuzzReport:
    """Run every operation ``max_examples`` times per mode; return what happened."""
    schema = schemathesis.openapi.from_dict(target.document())
    schema.config.update(base_url=target.base_url)
    report = FuzzReport()
    with requests.Session() as session:
        for label, body in EXPLICIT:
            method, path = label.split(" ", 1)
            case = schema[path][method].Case(body=body, media_type="application/json")
            status = _send(target, session, case, report)
            report.explicit.append((label, body, status))
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _drive(target, session, operation, mode, report, max_examples, derandomize, seed)
    return report


def _drive(
    target: Target,
    session: requests.Session,
    operation: Any,
    mode: GenerationMode,
    report: FuzzReport,
    max_examples: int,
    derandomize: bool,
    seed: int | None,
) -> None:
    # Only positive cases: a negative one may be negative by its model (empty, too long).
    names = [*target.models, None, None, None] if mode is GenerationMode.POSITIVE else [None]
    model = st.sampled_from(names)

    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.seed(seed)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), model=model)
    def run(case: Case, model: str | None) -> None:
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        _send(target, session, case, report)

    # Unsatisfiable: nothing to make negative, an operation without parameters or body.
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()


def _send(target: Target, session: requests.Session, case: Case, report: FuzzReport) -> int:
    label = f"{case.method.upper()} {case.operation.path}"
    headers = target.headers(case.operation.path)
    response = case.call(session=session, headers=headers, timeout=30)
    report.statuses[label][response.status_code] += 1
    example = _example(case, headers, target)
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
    except (AssertionError, FailureGroup) as failed:
        for failure in getattr(failed, "exceptions", None) or [failed]:
            title = getattr(failure, "title", type(failure).__name__)
            message = f"{failure}\n\n{response.status_code}: {response.text[:300]}"
            report.add_finding(label, title, _mask(message, target), example)
    text = response.text
    leak = _LEAKS.search(text) or next((s for s in target.secrets if s in text), None)
    if leak:
        report.add_finding(label, "internals in the body", _mask(text[:500], target), example)
    return response.status_code


def _example(case: Case, headers: dict[str, str], target: Target) -> str:
    return _mask(case.as_curl_command(headers=headers), target)[:20000]


def _mask(text: str, target: Target) -> str:
    return text.replace(target.client_key, "$CLIENT_KEY").replace(target.admin_token, "$ADMIN")
