"""Command line: `sensor-sd run | once | check | inventory-server | fleet`.

Exit codes: 0 done, 1 the inventory failed (or a drop was held back),
2 bad configuration or bad usage. `check` mirrors `once`: 1 when the drop
guard would hold the change back. On a terminal, `once` and `check` end with
one plain-language line saying what happened, what the targets file holds
and what the exit code means (`--summary` forces it on or off).

`once` and `check` import only what they use: the server, the web package
(aiohttp's server, bcrypt, PyYAML), prometheus_client and the simulators are
imported inside the commands that need them, and they fetch with the standard
library's http.client instead of aiohttp (inventory.OneShotClient, same rules),
since at 100 hosts importing those cost more than the sync (tests/test_cold_start.py keeps it so; bench/cold_start.py
measures it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from sensor_sd import __version__, config, log
from sensor_sd.config import Settings
from sensor_sd.errors import ConfigError, PublishError
from sensor_sd.guard import Decision
from sensor_sd.inventory import Client, OneShotClient
from sensor_sd.metrics import Discarded, Metrics
from sensor_sd.poller import GOOD, PollResult, Result
from sensor_sd.scheduler import Discoverer
from sensor_sd.targets import parse_file

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
STOP_GRACE_SECONDS = 1.5


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"sensor-sd: {message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for `argv`: a simulator's flags are added (and the simulator imported) only for its command."""
    parser = _Parser(prog="sensor-sd", description="Prometheus service discovery for fleets of embedded sensors.")
    parser.add_argument("--version", action="version", version=f"sensor-sd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="the daemon: poll, publish file + HTTP, serve metrics")
    once = sub.add_parser("once", help="one sync, then exit (0 published, 1 failed or held, 2 bad config)")
    once.add_argument("--force", action="store_true", help="apply a drop the guard would hold back")
    check = sub.add_parser("check", help="fetch and validate, print the diff against the current file, write nothing")
    for p in (run, once, check):
        config.add_arguments(p)
    for p in (once, check):
        p.add_argument("--summary", choices=("auto", "always", "never"), default="auto",
                       help="end with one plain-language line (auto: when stderr is a terminal)")
    inventory_server = sub.add_parser("inventory-server", help="inventory simulator (port 1337)")
    fleet_sim = sub.add_parser("fleet", help="sensor fleet simulator (an HTTP proxy for sensor_N:9100)")
    # The first word that is not an option names the command (the top-level options take no value).
    command = next((a for a in argv if not a.startswith("-")), None)
    if command == "inventory-server":
        from sensor_sd.sim import inventory

        inventory.add_arguments(inventory_server)
    elif command == "fleet":
        from sensor_sd.sim import fleet

        fleet.add_arguments(fleet_sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    if args.command == "inventory-server":
        from sensor_sd.sim import inventory

        return inventory.run(args)
    if args.command == "fleet":
        from sensor_sd.sim import fleet

        return fleet.run(args)
    try:
        settings = config.load(vars(args))
    except ConfigError as exc:
        print(f"sensor-sd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logger = log.setup(settings.log_format, settings.log_level)
    try:
        if args.command == "run":
            return asyncio.run(_run(settings, logger))
        summary = args.summary == "always" or (args.summary == "auto" and sys.stderr.isatty())
        if args.command == "once":
            return asyncio.run(_once(settings, logger, force=args.force, summary=summary))
        return asyncio.run(_check(settings, logger, summary=summary))
    except KeyboardInterrupt:
        return EXIT_OK


async def _run(settings: Settings, logger: logging.Logger) -> int:
    import prometheus_client

    from sensor_sd import memory, server

    _raise_nofile_limit(logger)
    prometheus_client.disable_created_metrics()
    metrics = Metrics()
    async with Client(settings) as client:
        discoverer = Discoverer(settings, client, metrics, logger)
        if not _take_file(discoverer, claim=True):
            return EXIT_CONFIG
        discoverer.load_file()
        app = server.make_app(discoverer.store, settings, discoverer, metrics)
        ssl_context = None
        if settings.web_config is not None:  # parsed once by config.load, TLS context included
            from sensor_sd.web.auth import install

            install(app, settings.web_config)
            ssl_context = settings.web_config.ssl_context
        try:
            runner = await server.start(app, settings, ssl_context)
        except OSError as exc:
            addr = settings.listen_address
            print(f"sensor-sd: cannot listen on LISTEN_ADDRESS={addr.host}:{addr.port}: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_CONFIG
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, discoverer.request_reload)  # else SIGHUP would end the daemon
        addr = settings.listen_address
        log.event(logger, logging.INFO, "sensor-sd started", version=__version__,
                  listen=f"{addr.host or '0.0.0.0'}:{addr.port}", sources=[s.display_url for s in settings.sources],
                  targets_file=str(settings.targets_file or ""), interval=settings.update_interval)
        polling = asyncio.create_task(discoverer.run(stop))
        loop.call_later(memory.AFTER_START_SECONDS, memory.release)  # the start's garbage: ~0.6 MiB at 100 hosts
        store, file = discoverer.store, discoverer.file
        tasks = {polling, *([asyncio.create_task(file.keep(lambda: store.snapshot, stop))] if file else [])}
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        # Abandon an in-flight poll: the file is only ever replaced atomically.
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
        await runner.cleanup()
        log.event(logger, logging.INFO, "sensor-sd stopped")
    failure = polling.exception() if polling.done() and not polling.cancelled() else None
    if failure is not None:
        raise failure
    return EXIT_OK


def _raise_nofile_limit(logger: logging.Logger) -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: a socket per in-flight store plus scrapers' connections
    outgrow the usual soft 1024 long before the hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.event(logger, logging.WARNING, "cannot raise the open files limit", soft=soft, hard=hard, error=str(exc))


async def _once(settings: Settings, logger: logging.Logger, *, force: bool, summary: bool) -> int:
    before = _file_state(settings.targets_file)
    async with OneShotClient(settings) as client:
        discoverer = Discoverer(settings, client, Discarded(), logger)
        if not _take_file(discoverer, claim=True):
            return EXIT_CONFIG
        discoverer.load_file()
        current = _sizes(discoverer)
        results = await discoverer.poll_all(force=force)
    code = EXIT_FAILED if any(r.result not in GOOD for r in results) else EXIT_OK
    if summary:
        print(_summary("once", results, settings, code, before, current), file=sys.stderr, flush=True)
    return code


async def _check(settings: Settings, logger: logging.Logger, *, summary: bool) -> int:
    """Fetch, validate and ask the guard (a pure query): publishes nothing, logs no sync."""
    before_file = _file_state(settings.targets_file)
    async with OneShotClient(settings) as client:
        discoverer = Discoverer(settings, client, Discarded(), logger)
        if not _take_file(discoverer, claim=False):  # check reads only: no lock, no clean-up
            return EXIT_CONFIG
        discoverer.load_file()
        before = {g.source: g.targets for g in (discoverer.snapshot.groups if discoverer.snapshot else ())}
        results = await asyncio.gather(*(discoverer.poll(s.name, dry_run=True) for s in settings.sources))
    for result in results:
        _print_check(result, before.get(result.source, ()), settings)
    code = EXIT_FAILED if any(r.result not in GOOD for r in results) else EXIT_OK
    if summary:
        current = {name: len(targets) for name, targets in before.items()}
        print(_summary("check", results, settings, code, before_file, current), file=sys.stderr, flush=True)
    return code


def _take_file(discoverer: Discoverer, *, claim: bool) -> bool:
    """Refuse a TARGETS_FILE that is not a regular file (or a symlink to one), or that another daemon writes.

    `claim` (run, once) takes the writer lock; without it (check) the path is only inspected.
    """
    file = discoverer.file
    if file is None:
        return True
    try:
        file.publisher.claim() if claim else file.publisher.inspect()
    except PublishError as exc:
        print(f"sensor-sd: cannot use TARGETS_FILE: {exc}", file=sys.stderr)
        return False
    return True


def _print_check(result: PollResult, before: tuple[str, ...], settings: Settings) -> None:
    if result.result == "error":
        print(f"{result.source}: inventory failed: {result.error}")
        return
    added, removed = result.added, result.removed
    print(f"{result.source}: {result.targets} targets, +{len(added)} -{len(removed)} against the current file")
    for target in added:
        print(f"+ {target}")
    for target in removed:
        print(f"- {target}")
    if result.result == "held" and result.guard is not None:
        print(f"{result.source}: the drop guard would hold this change back "
              f"({_guard_words(result.guard, len(before))}; MAX_DROP_RATIO {settings.max_drop_ratio:g})")


# --- the summary line ---------------------------------------------------------------------


_FileState = tuple[int, int, int] | None  # (inode, mtime ns, size) of the targets file; None when absent


def _sizes(discoverer: Discoverer) -> dict[str, int]:
    return {g.source: len(g.targets) for g in (discoverer.snapshot.groups if discoverer.snapshot else ())}


def _file_state(path: Path | None) -> _FileState:
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if st is not None else None


def _file_count(path: Path) -> int | None:
    """Targets in the file as it is now; None when it cannot be read back."""
    try:
        return sum(len(g.targets) for g in parse_file(path.read_bytes()))
    except (OSError, ValueError):
        return None


def _guard_words(d: Decision, current: int) -> str:
    """The guard's own decision in words (the rule lives in `guard.py`). A one-shot process has no window
    history: the current list is the yardstick."""
    words = f"would remove {d.removed} of {current} targets, seen {d.seen} of {d.needed} polls"
    if d.waits_for_time:
        words += f", needs {d.hold:g} s (DROP_HOLD)"
    return words


_FAILURE = {"unreachable": "inventory unreachable", "timeout": "inventory timed out",
            "http_status": "inventory answered with an error", "too_large": "inventory answer too large",
            "decode": "inventory answer unusable",
            "internal": "internal error in sensor-sd (a bug: please report it with the log)"}


def _outcome(command: str, r: PollResult, current: int, settings: Settings) -> str:
    if r.result is Result.ERROR:
        detail = r.error or ""
        if r.reason and detail.startswith(f"{r.reason}: "):
            detail = detail[len(r.reason) + 2:]
        return f"{_FAILURE.get(r.reason or '', 'inventory failed')} ({detail})"
    if r.result is Result.HELD:
        verb = "would be held back" if command == "check" else "held back"
        why = f" ({_guard_words(r.guard, current)})" if r.guard is not None else ""
        return f"change {verb} by the drop guard{why}"
    if r.result is Result.UNCHANGED:
        return "inventory unchanged"
    return f"{'would apply' if command == 'check' else 'applied'} +{len(r.added)} -{len(r.removed)} targets"


def _file_words(command: str, settings: Settings, before: _FileState, results: list[PollResult]) -> str:
    path = settings.targets_file
    if path is None:
        return "no targets file (TARGETS_FILE is empty)"
    after = _file_state(path)
    if after is None:
        if command == "check":
            return "nothing written, no targets file yet"
        if any(r.result in GOOD for r in results):
            return "targets file not written (see the error above)"
        return "no targets file (nothing known yet, nothing written)"
    total = _file_count(path)
    if total is None:
        return "targets file unreadable"
    if command == "check":
        return f"nothing written, targets file holds {total} targets"
    return f"targets file {'unchanged' if after == before else 'written'} ({total} targets)"


def _summary(command: str, results: list[PollResult], settings: Settings, code: int, before: _FileState,
             current: dict[str, int]) -> str:
    """One line for a human at a terminal: what happened, what the file holds, what the exit code means."""
    several = len(results) > 1
    outcomes = ", ".join((f"{r.source}: " if several else "")
                         + _outcome(command, r, current.get(r.source, 0), settings) for r in results)
    if code == EXIT_OK:
        meaning = "success"
    else:
        held = "a change would be held back" if command == "check" else "a change was held back (--force applies it)"
        failed = any(r.result is Result.ERROR for r in results)
        meaning = " and ".join(w for w, on in (("the inventory failed", failed),
                                               (held, any(r.result is Result.HELD for r in results))) if on)
    return (f"sensor-sd {command}: {outcomes}; {_file_words(command, settings, before, results)}; "
            f"exit {code}: {meaning}")
