"""Child processes of the local stack, the tests and the benchmarks: one way to start, watch and stop them.

Every child runs in its own session with its output appended to a log file,
is stopped by its own process id (SIGTERM to its group, SIGKILL after a
deadline) and, on Linux, is told by the kernel to terminate if the process
that started it dies without cleaning up, so a killed runner leaves no
orphans holding ports. Readiness is polled with a deadline, never slept for.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localstack.net import LOOPBACK, StackError, http_ok, wait_until


@dataclass
class Proc:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM to the child's process group (its own session), SIGKILL after `timeout`; reaps it.

        The group is signalled only while the leader is unreaped, so the group id
        cannot belong to anyone else yet.
        """
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait()
        return int(self.popen.returncode)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            self.popen.send_signal(signum)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident memory now, from /proc/PID/status (Linux)."""
        return proc_status_kib(self.popen.pid, "VmRSS") * 1024


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when its parent dies (no orphans after a kill -9).

    The kernel ties this to the spawning *thread*: start children from a
    thread that lives as long as the stack (the main thread in practice).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: preexec must not import or allocate much
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(name: str, argv: Sequence[str], logdir: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> Proc:
    """Start `argv` in its own session with output appended to `logdir/name.log`."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
                                 preexec_fn=_die_with_parent())
    return Proc(name, popen, log)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not installed (make installs it: apt-get install {name})")
    return path


def sensor_sd_argv(*args: str) -> list[str]:
    """sensor-sd's command line, run by this interpreter (the checkout's virtualenv)."""
    return [sys.executable, "-m", "sensor_sd", *args]



def proc_status_kib(pid: int, key: str) -> int:
    """A `kB` field (VmRSS, VmHWM, ...) of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise StackError(f"no {key} in /proc/{pid}/status")



def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_all(procs: Sequence[Proc | None]) -> None:
    """Stop every process given, newest (last) first."""
    for p in reversed([p for p in procs if p is not None]):
        p.stop()


@dataclass
class Procs:
    """Processes started for one test or benchmark, stopped newest first by `stop_all`."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], ready: str | None = None, env: Mapping[str, str] | None = None,
              timeout: float = 60.0) -> Proc:
        proc = spawn(name, argv, self.workdir / "logs", env, cwd=self.workdir)
        self.started.append(proc)
        if ready is not None:
            def up() -> bool:
                if not proc.alive():
                    raise StackError(f"{name} exited:\n{proc.tail()}")
                return http_ok(ready)

            wait_until(up, timeout, f"{name} at {ready}", interval=0.1)
        return proc

    def kill(self, proc: Proc) -> None:
        """SIGKILL to the process group, as a crashed node: no flush, no goodbye."""
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(10)

    def stop_all(self) -> None:
        stop_all(self.started)
        self.started.clear()


_LISTENING = re.compile(rf"http://{re.escape(LOOPBACK)}:(\d+)")


@dataclass(frozen=True)
class Listening:
    """A child that announced its address in its log (the simulators' `... listening on http://IP:PORT` line)."""

    proc: Proc
    port: int
    banner: str  # the whole announcing line

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        return self.proc.popen

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def rss_bytes(self) -> int:
        return self.proc.rss_bytes()

    def terminate(self, timeout: float = 5.0) -> int:
        """SIGTERM, as an operator stops it; its exit code (a SIGKILL after `timeout` shows as -9)."""
        return self.proc.stop(timeout)


def spawn_listening(name: str, argv: Sequence[str], logdir: Path, timeout: float = 20.0) -> Listening:
    """Start a child that binds port 0 and prints the port it got; wait for that line.

    The port is read from the first log line naming a loopback URL, so a
    test never guesses a port another process might take first.
    """
    proc = spawn(name, argv, logdir)

    def announced() -> re.Match[str] | None:
        for line in proc.log.read_text(errors="replace").splitlines(keepends=True):
            match = _LISTENING.search(line)
            if match and line.endswith("\n"):
                return match
        if not proc.alive():
            raise StackError(f"{name} exited with code {proc.popen.returncode} before it announced its port:\n"
                             f"{proc.tail()}")
        return None

    try:
        match = wait_until(announced, timeout, f"{name} to announce its port", interval=0.02)
    except BaseException:
        proc.stop()
        raise
    return Listening(proc, int(match[1]), match.string.strip())
