"""The CLI as a user runs it: real processes, real signals, real files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sensor_sd.sim.stack import admin_call, Stack, free_port, http_get, http_ok, http_request, wait_until


def sd(args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor_sd", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


@pytest.fixture
def inventory(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack()
    stack.start(("inventory",))
    return stack


def env_for(stack: Stack, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"INVENTORY_URL": f"inv={stack.url('inventory', '/inventory')}", "TARGETS_FILE": str(tmp_path / "t.json"),
            "LISTEN_ADDRESS": f"127.0.0.1:{free_port()}", "LOG_FORMAT": "json", **extra}


def put_sensors(stack: Stack, names: list[str]) -> None:
    admin_call(stack.url("inventory", "/admin/sensors"), "PUT", names)


def targets(path: Path) -> list[str]:
    return [t for g in json.loads(path.read_bytes()) for t in g["targets"]]


def test_once_publishes_then_holds_a_mass_drop_until_forced(inventory: Stack, tmp_path: Path) -> None:
    env = env_for(inventory, tmp_path)
    assert sd(["once"], env).returncode == 0
    assert len(targets(tmp_path / "t.json")) == 100
    before = (tmp_path / "t.json").read_bytes()
    put_sensors(inventory, ["sensor_1"])
    held = sd(["once"], env)
    assert held.returncode == 1
    assert "drop guard" in held.stderr
    assert (tmp_path / "t.json").read_bytes() == before
    assert sd(["once", "--force"], env).returncode == 0
    assert targets(tmp_path / "t.json") == ["sensor_1:9100"]


def test_check_prints_the_diff_and_writes_nothing(inventory: Stack, tmp_path: Path) -> None:
    env = env_for(inventory, tmp_path)
    sd(["once"], env)
    before = (tmp_path / "t.json").read_bytes()
    put_sensors(inventory, [f"sensor_{i}" for i in range(1, 100)] + ["fresh"])
    out = sd(["check"], env)
    assert out.returncode == 0, out.stderr
    assert "+ fresh:9100" in out.stdout.splitlines()
    assert "- sensor_0:9100" in out.stdout.splitlines()
    assert "inv: 100 targets, +1 -1 against the current file" in out.stdout
    assert (tmp_path / "t.json").read_bytes() == before


def test_check_with_dead_inventory_exits_1(tmp_path: Path) -> None:
    out = sd(["check"], {"INVENTORY_URL": "http://127.0.0.1:1/inv", "TARGETS_FILE": str(tmp_path / "t.json")})
    assert out.returncode == 1
    assert "inventory failed" in out.stdout
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_on_signal_within_2s_with_file_intact(inventory: Stack, tmp_path: Path, sig: int) -> None:
    env = env_for(inventory, tmp_path, UPDATE_INTERVAL="0.05")
    url = f"http://{env['LISTEN_ADDRESS']}"
    proc = subprocess.Popen([sys.executable, "-m", "sensor_sd", "run"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: http_ok(url + "/-/ready"), 20, "sensor-sd ready")
        assert http_get(url + "/targets")[0] == 200
        # Ready means /targets serves a good snapshot; the file follows it on the publisher's turn.
        wait_until(lambda: (tmp_path / "t.json").exists(), 20, "targets file written")
        body = (tmp_path / "t.json").read_bytes()
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
    finally:
        proc.kill()
        proc.communicate()
    assert (tmp_path / "t.json").read_bytes() == body
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_run_stops_promptly_while_a_poll_hangs(inventory: Stack, tmp_path: Path) -> None:
    admin_call(inventory.url("inventory", "/admin/fault"), "PUT", {"mode": "hang"})
    env = env_for(inventory, tmp_path, REQUEST_TIMEOUT="30")
    url = f"http://{env['LISTEN_ADDRESS']}"
    proc = subprocess.Popen([sys.executable, "-m", "sensor_sd", "run"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: http_ok(url + "/-/healthy"), 20, "sensor-sd healthy")
        assert http_get(url + "/-/ready")[0] == 503  # nothing good yet: not ready, /targets refuses
        assert http_get(url + "/targets")[0] == 503
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
    finally:
        proc.kill()
        proc.wait()


def test_listen_address_taken_exits_2_with_a_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = sd(["run"], {"INVENTORY_URL": "http://127.0.0.1:1/inv", "TARGETS_FILE": str(tmp_path / "t.json"),
                           "LISTEN_ADDRESS": f"127.0.0.1:{port}"})
    assert out.returncode == 2
    assert f"cannot listen on LISTEN_ADDRESS=127.0.0.1:{port}" in out.stderr


def test_json_logs_one_object_per_line_with_change_details(inventory: Stack, tmp_path: Path) -> None:
    out = sd(["once"], env_for(inventory, tmp_path))
    events = [json.loads(line) for line in out.stderr.splitlines()]
    synced = [e for e in events if e["msg"] == "inventory synced"]
    assert synced and synced[0]["source"] == "inv" and synced[0]["added"] == 100
    assert len(synced[0]["added_names"]) == 10
    assert {"ts", "level", "duration", "result", "targets"} <= synced[0].keys()


# --- check: the guard's own decision, once's exit codes, nothing written (issue 13 #10) ---------


def test_check_exits_1_when_the_guard_would_hold_as_once_does(inventory: Stack, tmp_path: Path) -> None:
    env = env_for(inventory, tmp_path)
    sd(["once"], env)
    before = (tmp_path / "t.json").read_bytes()
    put_sensors(inventory, ["sensor_1"])
    out = sd(["check"], env)
    assert out.returncode == 1, out.stdout
    assert "inv: the drop guard would hold this change back" in out.stdout
    assert "inventory synced" not in out.stderr
    assert sd(["once"], env).returncode == 1
    assert (tmp_path / "t.json").read_bytes() == before


def test_check_takes_the_decision_from_the_guard(inventory: Stack, tmp_path: Path) -> None:
    """With one confirmation and no hold the guard applies a mass drop at once: check says so, once does it."""
    env = env_for(inventory, tmp_path, DROP_CONFIRMATIONS="1", DROP_HOLD="0")
    sd(["once"], env)
    put_sensors(inventory, ["sensor_1"])
    out = sd(["check"], env)
    assert out.returncode == 0, out.stdout
    assert "would hold" not in out.stdout and "- sensor_0:9100" in out.stdout.splitlines()
    assert len(targets(tmp_path / "t.json")) == 100
    assert sd(["once"], env).returncode == 0
    assert targets(tmp_path / "t.json") == ["sensor_1:9100"]


def test_check_without_a_file_creates_none_and_logs_no_sync(inventory: Stack, tmp_path: Path) -> None:
    out = sd(["check"], env_for(inventory, tmp_path / "out"))
    assert out.returncode == 0
    assert "+ sensor_0:9100" in out.stdout.splitlines()
    assert "inventory synced" not in out.stderr
    assert not (tmp_path / "out").exists()  # not even the directory


# --- one plain-language summary line on a terminal (issue 13 #9) ---------------------------------


def write_targets(path: Path, count: int, source: str = "inv") -> None:
    path.write_text(json.dumps([{"targets": [f"sensor_{i}:9100" for i in range(count)],
                                 "labels": {"__metrics_path__": "/metrics", "source": source}}]))


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


DEAD = {"INVENTORY_URL": "inv=http://127.0.0.1:1/inv", "LOG_FORMAT": "json"}


def test_once_summary_unreachable_with_a_file(tmp_path: Path) -> None:
    write_targets(tmp_path / "t.json", 100)
    out = sd(["once", "--summary=always"], {**DEAD, "TARGETS_FILE": str(tmp_path / "t.json")})
    assert out.returncode == 1
    assert last_line(out.stderr) == ("sensor-sd once: inventory unreachable (connection refused: 127.0.0.1:1); "
                                     "targets file unchanged (100 targets); exit 1: the inventory failed")
    assert "ssl:default" not in out.stderr


def test_once_summary_unreachable_with_nothing_known(tmp_path: Path) -> None:
    out = sd(["once", "--summary=always"], {**DEAD, "TARGETS_FILE": str(tmp_path / "t.json")})
    assert out.returncode == 1
    line = last_line(out.stderr)
    assert line == ("sensor-sd once: inventory unreachable (connection refused: 127.0.0.1:1); "
                    "no targets file (nothing known yet, nothing written); exit 1: the inventory failed")
    assert '"kept"' not in out.stderr  # nothing existed, so nothing is said to be kept


def test_once_and_check_summaries_for_success_unchanged_and_held(inventory: Stack, tmp_path: Path) -> None:
    env = env_for(inventory, tmp_path)
    first = sd(["once", "--summary=always"], env)
    assert last_line(first.stderr) == ("sensor-sd once: applied +100 -0 targets; "
                                       "targets file written (100 targets); exit 0: success")
    again = sd(["once", "--summary=always"], env)
    assert last_line(again.stderr) == ("sensor-sd once: inventory unchanged; "
                                       "targets file unchanged (100 targets); exit 0: success")
    put_sensors(inventory, ["sensor_1"])
    held = sd(["once", "--summary=always"], env)
    assert last_line(held.stderr) == (
        "sensor-sd once: change held back by the drop guard (would remove 99 of 100 targets, seen 1 of 3 polls); "
        "targets file unchanged (100 targets); exit 1: a change was held back (--force applies it)")
    check = sd(["check", "--summary=always"], env)
    assert check.returncode == 1
    assert last_line(check.stderr) == (
        "sensor-sd check: change would be held back by the drop guard (would remove 99 of 100 targets, "
        "seen 1 of 3 polls); nothing written, targets file holds 100 targets; exit 1: a change would be held back")
    quiet = sd(["check"], env)  # not a terminal: no summary unless asked
    assert "sensor-sd check:" not in quiet.stderr


def test_summary_on_a_real_terminal(tmp_path: Path) -> None:
    """No option: a pty as stdout and stderr is enough to get the summary line."""
    import pty

    write_targets(tmp_path / "t.json", 7)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sensor_sd", "once"], stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, **DEAD, "TARGETS_FILE": str(tmp_path / "t.json")})
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=30) == 1
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    assert last_line(text) == ("sensor-sd once: inventory unreachable (connection refused: 127.0.0.1:1); "
                               "targets file unchanged (7 targets); exit 1: the inventory failed")
    piped = sd(["once"], {**DEAD, "TARGETS_FILE": str(tmp_path / "t.json")})
    assert "sensor-sd once:" not in piped.stderr


# --- files named by variables are read bounded: FIFO, device, huge file (issue 10 #5) -------------

FILE_VARS = ["INVENTORY_TOKEN_FILE", "WEB_CONFIG_FILE", "INVENTORY_CA_FILE"]
START_DEADLINE = 20.0  # seconds for a refusal; before the fix a FIFO blocked start-up for ever


def _limit_memory() -> None:
    """The child may not take more than 2 GiB of address space: an unbounded read fails fast, not the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))


def refused_at_start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "sensor_sd", "run"], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=START_DEADLINE, preexec_fn=_limit_memory)
    assert time.monotonic() - started < START_DEADLINE
    return out


@pytest.mark.parametrize("variable", FILE_VARS)
def test_a_fifo_as_a_file_variable_exits_2_at_once(variable: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = refused_at_start({"INVENTORY_URL": "http://127.0.0.1:1/inv", "TARGETS_FILE": str(tmp_path / "t.json"),
                            "LISTEN_ADDRESS": f"127.0.0.1:{free_port()}", variable: str(fifo)})
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"sensor-sd: invalid {variable}=") and "a FIFO, not a regular file" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("variable", FILE_VARS)
def test_dev_zero_as_a_file_variable_exits_2_without_reading(variable: str, tmp_path: Path) -> None:
    """Before the fix the whole of /dev/zero was read: MemoryError (here within the 2 GiB limit) and exit 1."""
    out = refused_at_start({"INVENTORY_URL": "http://127.0.0.1:1/inv", "TARGETS_FILE": str(tmp_path / "t.json"),
                            "LISTEN_ADDRESS": f"127.0.0.1:{free_port()}", variable: "/dev/zero"})
    assert out.returncode == 2, out.stderr[-500:]
    assert "a character device, not a regular file" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(("variable", "limit"), [("INVENTORY_TOKEN_FILE", 64 * 1024), ("WEB_CONFIG_FILE", 1024 * 1024),
                                                 ("INVENTORY_CA_FILE", 16 * 1024 * 1024)])
def test_a_file_over_its_size_cap_exits_2(variable: str, limit: int, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"a" * (limit + 1))
    out = refused_at_start({"INVENTORY_URL": "http://127.0.0.1:1/inv", "TARGETS_FILE": str(tmp_path / "t.json"),
                            "LISTEN_ADDRESS": f"127.0.0.1:{free_port()}", variable: str(big)})
    assert out.returncode == 2
    assert f"{limit + 1} bytes, larger than the {limit} allowed" in out.stderr


def test_a_token_file_swapped_for_a_fifo_fails_the_poll_not_the_daemon(inventory: Stack, tmp_path: Path) -> None:
    """The token is re-read on every request, on the event loop: a FIFO there used to freeze the whole daemon."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    env = env_for(inventory, tmp_path, INVENTORY_TOKEN_FILE=str(token), UPDATE_INTERVAL="3600")
    url = f"http://{env['LISTEN_ADDRESS']}"
    proc = subprocess.Popen([sys.executable, "-m", "sensor_sd", "run"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: http_ok(url + "/-/ready"), 20, "sensor-sd ready")
        token.unlink()
        os.mkfifo(token)
        status, body = http_request(url + "/-/refresh", "POST", timeout=10)
        assert status == 502 and b"cannot read INVENTORY_TOKEN_FILE: a FIFO, not a regular file" in body
        assert http_get(url + "/targets")[0] == 200  # last known good still served
        assert http_ok(url + "/-/healthy")
    finally:
        proc.kill()
        proc.communicate()


# --- the output file: symlinks written through, non-regular refused, one writer (issue 10 #6) -----


def start_run(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sensor_sd", "run"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_once_writes_through_a_symlink_and_the_link_stays(inventory: Stack, tmp_path: Path) -> None:
    (tmp_path / "..2026_v1").mkdir()
    (tmp_path / "..data").symlink_to("..2026_v1")
    link = tmp_path / "t.json"
    link.symlink_to("..data/t.json")
    env = env_for(inventory, tmp_path)
    assert sd(["once"], env).returncode == 0
    assert link.is_symlink() and os.readlink(link) == "..data/t.json"
    assert len(targets(tmp_path / "..2026_v1" / "t.json")) == 100
    put_sensors(inventory, [f"sensor_{i}" for i in range(1, 101)])
    assert sd(["once"], env).returncode == 0  # a second write: replaced again, in the target's directory
    assert link.is_symlink() and "sensor_100:9100" in targets(tmp_path / "..2026_v1" / "t.json")


@pytest.mark.parametrize("command", ["run", "once", "check"])
@pytest.mark.parametrize("make", ["fifo", "link_to_dev_null", "directory"])
def test_a_non_regular_targets_file_exits_2_and_is_left_alone(command: str, make: str, tmp_path: Path) -> None:
    """`TARGETS_FILE=/dev/null` used to turn /dev/null into a regular file; a FIFO hung the start (load)."""
    path = tmp_path / "t.json"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/null")  # the real /dev/null is only stat'ed
    before = os.lstat(path)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "sensor_sd", command],
                         env={**os.environ, "INVENTORY_URL": "http://127.0.0.1:1/inv", "TARGETS_FILE": str(path),
                              "LISTEN_ADDRESS": f"127.0.0.1:{free_port()}"},
                         capture_output=True, text=True, timeout=START_DEADLINE)
    assert time.monotonic() - started < START_DEADLINE
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"sensor-sd: cannot use TARGETS_FILE: {path}") and "not a regular file" in out.stderr
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert Path("/dev/null").is_char_device()


def test_a_second_daemon_on_the_same_file_exits_2_naming_the_first(inventory: Stack, tmp_path: Path) -> None:
    import socket as _socket

    first = start_run(env_for(inventory, tmp_path, UPDATE_INTERVAL="0.2"))
    try:
        wait_until(lambda: (tmp_path / "t.json").exists(), 20, "the first daemon's file")
        body = (tmp_path / "t.json").read_bytes()
        put_sensors(inventory, [f"sensor_{i}" for i in range(200)])  # the second would write something else
        second = subprocess.run([sys.executable, "-m", "sensor_sd", "run"],
                                env={**os.environ, **env_for(inventory, tmp_path)}, capture_output=True, text=True,
                                timeout=START_DEADLINE)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]  # one line
        assert f"written by another sensor-sd (pid@host {first.pid}@{_socket.gethostname()}" in second.stderr
        once = sd(["once"], env_for(inventory, tmp_path))  # a one-shot writer is refused too
        assert once.returncode == 2 and "another sensor-sd" in once.stderr
        assert sd(["check"], env_for(inventory, tmp_path)).returncode == 0  # check only reads: no lock needed
        assert first.poll() is None
        wait_until(lambda: len(targets(tmp_path / "t.json")) == 200, 20, "the first daemon still writing")
        assert body != (tmp_path / "t.json").read_bytes()
    finally:
        first.terminate()
        first.communicate(timeout=10)
    assert sd(["once"], env_for(inventory, tmp_path)).returncode == 0  # the lock went with the first daemon


def test_check_deletes_no_temp_file(inventory: Stack, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".t.json.{dead.stdout.strip()}.tmp"
    stale.write_bytes(b"[")
    assert sd(["check"], env_for(inventory, out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == [stale.name]  # no lock file, temp kept
    assert sd(["once"], env_for(inventory, out)).returncode == 0
    assert not stale.exists()


def test_check_beside_a_loaded_file_changes_nothing_in_its_directory(inventory: Stack, tmp_path: Path) -> None:
    """Loading the existing file as last known good reads only: a dead writer's temp stays, no byte or mtime moves."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = env_for(inventory, out_dir)
    write_targets(out_dir / "t.json", 7)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out_dir / f".t.json.{dead.stdout.strip()}.tmp"
    stale.write_bytes(b"[")

    def state() -> list[tuple[str, int, int, bytes]]:
        return sorted((p.name, p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in out_dir.iterdir())

    before = state()
    out = sd(["check"], env)
    assert out.returncode == 0, out.stderr
    assert "inv: 100 targets, +93 -0 against the current file" in out.stdout.splitlines()
    assert "loaded targets file as last known good" in out.stderr  # the file was read ...
    assert state() == before  # ... and nothing was written, locked or removed


def test_check_words_a_drop_that_waits_for_time_only(inventory: Stack, tmp_path: Path) -> None:
    env = env_for(inventory, tmp_path, DROP_CONFIRMATIONS="1", DROP_HOLD="600")
    assert sd(["once"], env).returncode == 0
    put_sensors(inventory, ["sensor_1"])
    out = sd(["check"], env)
    assert out.returncode == 1
    assert ("inv: the drop guard would hold this change back (would remove 99 of 100 targets, seen 1 of 1 polls, "
            "needs 600 s (DROP_HOLD); MAX_DROP_RATIO 0.5)") in out.stdout.splitlines()


# --- a file removed or changed under the daemon is rewritten (issue 13 #4) ------------------------


def restores(url: str) -> float:
    status, body = http_get(url + "/metrics")
    assert status == 200
    line = next(ln for ln in body.decode().splitlines() if ln.startswith("sensor_sd_file_restores_total "))
    return float(line.split()[1])


def test_a_file_removed_or_overwritten_under_the_daemon_is_restored(inventory: Stack, tmp_path: Path) -> None:
    """Even while the inventory fails (no good poll publishes): the daemon is the one writer of its file."""
    env = env_for(inventory, tmp_path, UPDATE_INTERVAL="0.5")
    url = f"http://{env['LISTEN_ADDRESS']}"
    path = tmp_path / "t.json"
    proc = start_run(env)
    try:
        wait_until(lambda: http_ok(url + "/-/ready") and path.exists(), 20, "sensor-sd ready with its file")
        good = path.read_bytes()
        assert restores(url) == 0
        admin_call(inventory.url("inventory", "/admin/fault"), "PUT", {"mode": "status", "code": 503})
        path.unlink()  # what a second `make run` did
        wait_until(lambda: path.exists() and path.read_bytes() == good, 10, "the deleted file restored")
        wait_until(lambda: restores(url) == 1, 5, "one restore counted")
        path.write_bytes(b"garbage")
        wait_until(lambda: path.read_bytes() == good, 10, "the overwritten file restored")
        wait_until(lambda: restores(url) == 2, 5, "two restores counted")
        assert proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    found = [json.loads(ln).get("found") for ln in err.splitlines()
             if "rewritten from the snapshot" in ln]
    assert found == ["missing", "changed"]
