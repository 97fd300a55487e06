"""deploy/k8s/model_fetch.py: what Job model-fetch leaves on the models volume is what
an engine with HF_HUB_OFFLINE=1 and ``--model REPO`` (no --revision) loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from huggingface_hub import snapshot_download

from tests.deploy.conftest import DEPLOY

REV = "a" * 40
OLD = "b" * 40


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("model_fetch", DEPLOY / "k8s" / "model_fetch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_fetch(hf_home: Path, repo: str, revision: str) -> None:
    """What snapshot_download(repo, revision=REV) leaves, then refs/main as fetch writes it."""
    base = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = base / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(revision)


def test_a_fetched_revision_is_what_offline_loading_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mf = load()
    monkeypatch.setenv("SMALL_REPO", "org/model")
    monkeypatch.setenv("SMALL_REVISION", REV)
    fake_fetch(tmp_path, "org/model", OLD)
    assert not mf.is_ready(tmp_path, "org/model", REV)
    (tmp_path / "hub" / "models--org--model" / "refs" / "main").unlink()
    fake_fetch(tmp_path, "org/model", REV)
    assert mf.is_ready(tmp_path, "org/model", REV)
    mf.check(tmp_path, "small", timeout_s=0)
    # huggingface_hub, offline and asked for the default revision, finds the pinned one.
    path = snapshot_download("org/model", cache_dir=tmp_path / "hub", local_files_only=True)
    assert Path(path).name == REV


def test_check_fails_while_the_revision_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mf = load()
    monkeypatch.setenv("LARGE_REPO", "org/big")
    monkeypatch.setenv("LARGE_REVISION", REV)
    with pytest.raises(SystemExit, match="not on the models volume"):
        mf.check(tmp_path, "large", timeout_s=0, poll_s=0)


@pytest.mark.parametrize("revision", ["main", "v1.0", "abc123"])
def test_only_a_full_commit_is_a_pin(monkeypatch: pytest.MonkeyPatch, revision: str) -> None:
    monkeypatch.setenv("SMALL_REPO", "org/model")
    monkeypatch.setenv("SMALL_REVISION", revision)
    with pytest.raises(SystemExit, match="40-hex commit"):
        load().pin("small")
