"""vllm-router (Rust), the reference router of the throughput scenario, in its own venv.

The bench never installs it next to the gateway: :func:`ensure` creates
``$TOLLGATE_CACHE/bench-venv/vllm-router-<version>`` (``TOLLGATE_CACHE`` defaults to
``~/.cache/tollgate``) on first use with ``pip install vllm-router==<version>``, showing
pip's progress, and reuses it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

VERSION = "0.1.17"


def cache_root() -> Path:
    return Path(os.environ.get("TOLLGATE_CACHE", "~/.cache/tollgate")).expanduser()


def venv_dir(version: str = VERSION) -> Path:
    return cache_root() / "bench-venv" / f"vllm-router-{version}"


def ensure(version: str = VERSION) -> Path:
    """The ``vllm-router`` executable, installing it into the bench's venv if needed.

    A marker file is written last, so an install that was interrupted is redone."""
    venv = venv_dir(version)
    binary, marker = venv / "bin" / "vllm-router", venv / ".installed"
    if binary.exists() and marker.exists():
        return binary
    print(f"-- installing vllm-router=={version} into {venv} (first use only)", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "on",
         "--disable-pip-version-check", f"vllm-router=={version}"],
        check=True,
    )  # fmt: skip
    marker.write_text(version + "\n")
    print(f"-- vllm-router {version} ready: {binary}", flush=True)
    return binary


class RouterProcess:
    """``vllm-router --worker-urls URL --policy round_robin`` on ``port``, pinned."""

    def __init__(
        self, binary: Path, worker_url: str, port: int, metrics_port: int, log: Path,
        cpus: set[int] | None = None,
    ) -> None:  # fmt: skip
        self.argv = [
            str(binary), "--worker-urls", worker_url, "--host", "127.0.0.1",
            "--port", str(port), "--policy", "round_robin",
            "--prometheus-port", str(metrics_port), "--log-level", "warning",
        ]  # fmt: skip
        self.port = port
        self.log = log
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> RouterProcess:
        cpus = self.cpus
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("vllm-router exited:\n" + self.log.read_text()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).is_success:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("vllm-router did not start:\n" + self.log.read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
