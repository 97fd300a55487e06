"""The stand-in engine in a child process on a local port, for tests and benchmarks.

"Connection refused" is not a fault mode, since a listening server cannot refuse: stop
the child with `StandinProcess.stop()` (or leave `run_standin`) and its port refuses.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from engines.errors import LaunchError


class StandinProcess:
    """A stand-in engine in a child process on a local port; start, stop and restart it.

    The parent binds the port and hands the listening socket to the child, so there is no
    race for a free port, and a restart reuses the port. While stopped, it refuses.
    """

    def __init__(
        self,
        *,
        model: str = "standin-model",
        ttft_ms: float = 0.0,
        tpot_ms: float = 0.0,
        max_num_seqs: int = 256,
        max_model_len: int = 2048,
        embeddings: bool = False,
        fault: str | None = None,
        seed: int | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 20.0,
    ) -> None:
        self.host, self.port, self._timeout = host, port, startup_timeout
        self.args = ["--model", model, "--max-model-len", str(max_model_len)]
        self.args += ["--ttft-ms", str(ttft_ms), "--tpot-ms", str(tpot_ms)]
        self.args += ["--max-num-seqs", str(max_num_seqs)]
        self.args += ["--embeddings"] if embeddings else []
        self.args += ["--fault", fault] if fault else []
        self.args += ["--seed", str(seed)] if seed is not None else []
        self.args += ["--api-key", api_key] if api_key else []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The running stand-in's process id."""
        if self._proc is None:
            raise RuntimeError("The stand-in is not running.")
        return int(self._proc.pid)

    @property
    def base_url(self) -> str:
        """The root URL (no `/v1`): an OpenAI client wants `base_url + "/v1"`."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start the child, on the previous port after a stop; return `base_url`."""
        if self._proc is not None:
            raise LaunchError("the stand-in engine is already running")
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            self.port = sock.getsockname()[1]
            fd = sock.fileno()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "engines.standin", "--fd", str(fd), *self.args],
                pass_fds=[fd],
                env={**os.environ, "PYTHONPATH": path},
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
            )
        self._wait_ready()
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline and self._proc and self._proc.poll() is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.02)
        output = b""
        if self._log is not None:
            self._log.seek(0)
            output = self._log.read()[-2000:]
        self.stop()
        raise LaunchError(
            f"the stand-in engine did not become ready on {self.base_url}:\n"
            + output.decode(errors="replace")
        )

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL); its port then refuses connections."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> StandinProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def run_standin(**options: Any) -> Iterator[str]:
    """Run a stand-in engine (options as for `StandinProcess`); yield its base URL."""
    with StandinProcess(**options) as process:
        yield process.base_url
