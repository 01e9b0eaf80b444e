"""The local Ray a training run starts for itself, in a session of its own.

``ray.init()`` without an address starts the GCS, the raylet and the worker processes as children of the
driver, in the driver's process group. A signal sent to the whole group — ``timeout``, a closing terminal,
``kill -TERM -PGID``, many job launchers — then reaches Ray's processes as well as the driver; they end at
once and the driver can neither finish its step nor write the checkpoint its SIGTERM handler promises.

Here the head node is ``ray start --head --block`` in a new session (so group signals reach only the driver)
with its own temporary directory (so a plain ``ray.init()`` elsewhere on the machine never joins it). The
kernel ties it to the driver (``PR_SET_PDEATHSIG``): when the driver ends, even by SIGKILL, ``ray start`` gets
SIGTERM and stops every process it started. The driver connects with ``ray.init(address=...)``.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from policy.ports import free_port

_PR_SET_PDEATHSIG = 1
_READY = "Ray runtime started"


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the parent ends (and at once if it already has)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _kill_session(sid: int) -> None:
    """SIGKILL to every process of session ``sid``: the group its leader leads, and on Linux the groups of their
    own that Ray gives its worker processes."""
    pids = [int(e) for e in os.listdir("/proc") if e.isdigit()] if os.path.isdir("/proc") else []
    for pid in pids:
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # ended meanwhile, or not ours
            pass
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class LocalRay:
    """``with LocalRay(num_cpus, num_gpus) as ray_head: ray.init(address=ray_head.address)``.

    ``join=ADDRESS`` starts a further raylet (a stand-in for a second node) joining that head instead;
    ``resources`` are custom Ray resources of the node (``ray start --resources``)."""

    def __init__(
        self,
        num_cpus: int,
        num_gpus: int,
        *,
        resources: dict[str, float] | None = None,
        join: str | None = None,
        start_timeout_s: float = 180.0,
        wait: bool = True,
    ) -> None:
        """``wait=False`` returns once ``ray start`` is launched; call `wait_ready` before connecting (the caller
        can do other work, e.g. imports, while Ray boots)."""
        self.temp_dir = Path(tempfile.mkdtemp(prefix="funrl-ray-"))  # short: Ray's socket paths must fit 107 bytes
        self._log = self.temp_dir / "ray_start.log"
        command = [
            *(sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats"),
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            f"--dashboard-agent-listen-port={free_port('127.0.0.1')}",  # two raylets on one machine must not share it
        ]
        if resources:
            command.append(f"--resources={json.dumps(resources)}")
        if join:  # a worker node: the head's session (and temporary directory) is used
            self.address = join
            command.append(f"--address={join}")
        else:
            self.address = f"127.0.0.1:{free_port('127.0.0.1')}"
            port = self.address.rsplit(":", 1)[1]
            command += ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"]
        parent = os.getpid()
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: _die_with_parent(parent),  # before exec, in the child
            )
        self._start_timeout_s = start_timeout_s
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until the node is up (stopping it, and raising with the tail of its log, if it fails to start)."""
        try:
            self._wait_ready(self._start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while _READY not in self.log_text():
            if self._proc.poll() is not None:
                raise RuntimeError(f"the local Ray did not start (exit {self._proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Ray did not start within {timeout_s:.0f} s:\n{self.tail()}")
            time.sleep(0.2)

    def log_text(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self, timeout_s: float = 60.0, keep_logs: bool = False) -> None:
        """Stop every Ray process of this node and remove the temporary directory, unless ``keep_logs`` (a failed
        run: Ray's logs are in `logs_dir`). With ``keep_logs``, SIGTERM to ``ray start`` first, which stops its
        children in turn and lets them flush their logs (up to ``timeout_s``); then, or at once without it (the
        files are deleted anyway; seconds saved), SIGKILL to the whole session."""
        if keep_logs and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        _kill_session(self._proc.pid)
        self._proc.wait()
        if not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    @property
    def logs_dir(self) -> Path:
        """Ray's logs of this head's session (``ray start`` links ``session_latest`` to it)."""
        return self.temp_dir / "session_latest" / "logs"

    def __enter__(self) -> "LocalRay":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
