"""Put each engine tier's model on the shared models volume, at a pinned revision.

Runs in the vLLM image (its Python and huggingface_hub), mounted from the ConfigMap
``model-fetch``; the pins come from the ConfigMap ``engine-models`` (deploy/models.env):
``SMALL_REPO``, ``SMALL_REVISION``, ``LARGE_REPO``, ``LARGE_REVISION``.

``model_fetch.py fetch small large``  (Job model-fetch) downloads each tier's repo at its
    pinned commit into ``$HF_HOME/hub`` and points the repo's ``refs/main`` at that
    commit, so that an engine started with ``--model REPO`` and ``HF_HUB_OFFLINE=1``
    loads exactly the pinned snapshot, with or without ``--revision`` (the A100
    profiles pass the same commit; tests/deploy/test_model_pins.py keeps them equal).
``model_fetch.py check small``  (the engines' init container) waits until the tier's
    ``refs/main`` names the pinned commit and that snapshot holds a config.json.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

COMMIT = re.compile(r"[0-9a-f]{40}")


def pin(tier: str) -> tuple[str, str]:
    """(repo, revision) of ``tier``; the revision must be a full commit hash."""
    repo = os.environ[f"{tier.upper()}_REPO"]
    revision = os.environ[f"{tier.upper()}_REVISION"]
    if not COMMIT.fullmatch(revision):
        raise SystemExit(f"{tier.upper()}_REVISION must be a 40-hex commit, not {revision!r}")
    return repo, revision


def repo_dir(hf_home: Path, repo: str) -> Path:
    """huggingface_hub's cache folder of a model repo."""
    return hf_home / "hub" / ("models--" + repo.replace("/", "--"))


def is_ready(hf_home: Path, repo: str, revision: str) -> bool:
    base = repo_dir(hf_home, repo)
    ref = base / "refs" / "main"
    return (
        ref.is_file()
        and ref.read_text().strip() == revision
        and (base / "snapshots" / revision / "config.json").is_file()
    )


def fetch(hf_home: Path, tier: str) -> None:
    from huggingface_hub import snapshot_download  # in the vLLM image

    repo, revision = pin(tier)
    snapshot_download(repo, revision=revision)
    ref = repo_dir(hf_home, repo) / "refs" / "main"
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(revision)
    print(f"{tier}: {repo}@{revision} ready", flush=True)


def check(hf_home: Path, tier: str, timeout_s: float, poll_s: float = 10.0) -> None:
    repo, revision = pin(tier)
    deadline = time.monotonic() + timeout_s
    while not is_ready(hf_home, repo, revision):
        if time.monotonic() > deadline:
            raise SystemExit(f"{tier}: {repo}@{revision} not on the models volume")
        print(f"{tier}: waiting for {repo}@{revision} (Job model-fetch)", flush=True)
        time.sleep(poll_s)
    print(f"{tier}: {repo}@{revision} present", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("fetch", "check"):
        raise SystemExit("usage: model_fetch.py fetch|check TIER...")
    hf_home = Path(os.environ.get("HF_HOME", "/models/hf"))
    timeout_s = float(os.environ.get("MODEL_CHECK_TIMEOUT_S", "7200"))
    for tier in argv[1:]:
        if argv[0] == "fetch":
            fetch(hf_home, tier)
        else:
            check(hf_home, tier, timeout_s)


if __name__ == "__main__":
    main(sys.argv[1:])
