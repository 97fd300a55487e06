"""The A100 profiles are what a platform team can run as they are (issue 11, item 7).

Pinned weights, AWQ through the Marlin kernels, the tensor-parallel layout and a
tool-call parser that matches each model's chat template.
"""

from __future__ import annotations

import re

import pytest

from engines.plan import arg
from engines.profiles import EngineSpec, available_profiles, load_profile

#: Model family (repo prefix) -> the vLLM tool-call parser that reads its template's calls.
TOOL_PARSERS = {
    "Qwen/Qwen2.5-": "hermes",  # <tool_call>{...}</tool_call> blocks
    "hugging-quants/Meta-Llama-3.1-": "llama3_json",  # bare JSON calls
}


def _engine(profile: str) -> EngineSpec:
    return load_profile(profile, environ={}).engines[0]


def _container_engines() -> list[EngineSpec]:
    engines: list[EngineSpec] = []
    for name in available_profiles():
        profile = load_profile(name, environ={})
        if profile.runtime.kind == "container":
            engines.extend(profile.engines)
    return engines


def test_every_hub_model_is_pinned_to_a_commit() -> None:
    engines = _container_engines()
    assert {e.name for e in engines} >= {"small", "large"}
    for engine in engines:
        assert engine.model.repo, engine.name
        revision = arg(engine.args, "--revision")
        assert revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision), engine.name
        # vLLM pins the tokenizer to the same revision unless told otherwise.
        assert arg(engine.args, "--tokenizer-revision") is None


@pytest.mark.parametrize(("profile", "tp"), [("a100-large", 2), ("a100-small", 1)])
def test_both_tiers_serve_awq_through_marlin(profile: str, tp: int) -> None:
    engine = _engine(profile)
    assert "AWQ" in str(engine.model.repo)
    assert arg(engine.args, "--quantization") == "awq_marlin"
    assert arg(engine.args, "--dtype") == "float16"  # AWQ checkpoints are fp16
    assert engine.tensor_parallel_size == engine.gpus == tp
    assert engine.gpu == "a100-80gb"


def test_the_large_tier_is_a_70b_class_model() -> None:
    assert "70B" in str(_engine("a100-large").model.repo)


@pytest.mark.parametrize("profile", ["a100-large", "a100-small"])
def test_tool_calling_uses_the_parser_for_the_model(profile: str) -> None:
    engine = _engine(profile)
    repo = str(engine.model.repo)
    wanted = next(parser for prefix, parser in TOOL_PARSERS.items() if repo.startswith(prefix))
    assert "--enable-auto-tool-choice" in engine.args
    assert arg(engine.args, "--tool-call-parser") == wanted
