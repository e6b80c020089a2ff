"""A ``recfunnel serve`` in a child process, on a free loopback port: for tests and the benchmark.

    with ServerProcess(["--run", run, "--index", index]) as server:
        httpx.get(server.url + "/health")

The child prints its URL once loaded (``--port 0``: the system picks a free port, no race); the
context waits for that line, then for ``/health`` to answer, and on exit stops the child with
SIGTERM (SIGKILL if it has not gone within ``stop_timeout`` seconds).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from recfunnel.errors import RecfunnelError

__all__ = ["ServerProcess"]

_URL = re.compile(r"on (http://\S+)\s*$")


class ServerProcess:
    def __init__(
        self,
        args: list[Any],
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 120.0,
        stop_timeout: float = 15.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = [str(a) for a in args] + ["--host", host, "--port", "0"]
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.env = env
        self.url: str = ""
        self.process: subprocess.Popen | None = None
        self._logs: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._logs = tempfile.TemporaryDirectory(prefix="recfunnel-server-")
        out, err = (open(Path(self._logs.name) / name, "w") for name in ("stdout", "stderr"))
        with out, err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "recfunnel.cli", "serve", *self.args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
            )
        try:
            self.url = self._wait_for_url()
            self._wait_for_health()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; the exit code (None if never started)."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self._logs is not None:
            self._logs.cleanup()
            self._logs = None
        return code

    def log(self, name: str = "stderr") -> str:
        """What the child wrote so far to ``stdout`` or ``stderr``."""
        if self._logs is None:
            return ""
        return (Path(self._logs.name) / name).read_text(errors="replace")

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if match := _URL.search(self.log("stdout")):
                return match.group(1)
            if self.process.poll() is not None:
                raise RecfunnelError(
                    f"recfunnel serve exited with code {self.process.returncode} before serving: {self._last_line()}"
                )
            time.sleep(0.05)
        raise RecfunnelError(f"recfunnel serve did not load within {self.start_timeout:g} s: {self._last_line()}")

    def _wait_for_health(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError as e:  # refused until uvicorn listens
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RecfunnelError(
                        f"recfunnel serve at {self.url} never became healthy ({e}): {self._last_line()}"
                    ) from None
                time.sleep(0.05)

    def _last_line(self) -> str:
        lines = [line for line in self.log("stderr").splitlines() if line.strip()]
        return lines[-1] if lines else "(nothing on stderr)"
