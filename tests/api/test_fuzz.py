"""Fuzz the served API from its OpenAPI document: no 5xx, no leaks, all as documented.

A bounded run (``EXAMPLES`` per operation and mode, derandomised so CI is repeatable);
``python -m bench fuzz`` runs the long one. See :mod:`tests.support.fuzz`.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from engines.standin.process import StandinProcess
from tests.support import CLIENT_KEY, RunningGateway, serve_in_thread
from tests.support.fuzz import EXPLICIT, SMALL_ONLY_KEY, fuzz, fuzz_settings, target

EXAMPLES = 20


@pytest.fixture(scope="module")
def gateway(
    standin_pair: dict[str, StandinProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with serve_in_thread(fuzz_settings(tmp_path_factory.mktemp("fuzz"), standin_pair)) as gw:
        yield gw


def test_fuzz_finds_no_server_error_leak_or_undocumented_answer(gateway: RunningGateway) -> None:
    report = fuzz(target(gateway), max_examples=EXAMPLES, derandomize=True)
    findings = [
        f"{f.operation}: {f.check} (x{f.count})\n{f.message}\n{f.example}"
        for f in report.findings.values()
    ]
    assert not findings, "\n\n".join(findings)
    doc = target(gateway).document()
    operations = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item}
    assert set(report.statuses) == operations  # every operation was tried
    assert all(s < 500 for counts in report.statuses.values() for s in counts)


def test_wrong_types_are_tried_and_refused(gateway: RunningGateway) -> None:
    report = fuzz(target(gateway), max_examples=1, derandomize=True)
    assert len(report.explicit) == len(EXPLICIT)
    assert any(body.get("n") == "2" for _, body, _ in report.explicit)
    assert [status for *_, status in report.explicit] == [400] * len(EXPLICIT)


def test_models_lists_only_what_the_key_may_use(gateway: RunningGateway) -> None:
    limited = openai.OpenAI(base_url=gateway.v1, api_key=SMALL_ONLY_KEY, max_retries=0)
    assert [m.id for m in limited.models.list().data] == ["small"]
    with pytest.raises(openai.PermissionDeniedError):
        limited.models.retrieve("large")
    full = openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0)
    assert {m.id for m in full.models.list().data} == {"small", "large", "embed", "auto"}
