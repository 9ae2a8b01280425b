"""Command line: `sensor-sd run | once | check | inventory-server | fleet`.

Exit codes: 0 done, 1 the inventory failed (or a drop was held back),
2 bad configuration or bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import prometheus_client

from sensor_sd import __version__, config, log
from sensor_sd.config import Settings
from sensor_sd.errors import ConfigError
from sensor_sd.inventory import Client
from sensor_sd.metrics import Metrics
from sensor_sd.sync import Discoverer, PollResult

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
STOP_GRACE_SECONDS = 1.5


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"sensor-sd: {message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sensor-sd", description="Prometheus service discovery for fleets of embedded sensors.")
    parser.add_argument("--version", action="version", version=f"sensor-sd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="the daemon: poll, publish file + HTTP, serve metrics")
    once = sub.add_parser("once", help="one sync, then exit (0 published, 1 failed or held, 2 bad config)")
    once.add_argument("--force", action="store_true", help="apply a drop the guard would hold back")
    check = sub.add_parser("check", help="fetch and validate, print the diff against the current file, write nothing")
    for p in (run, once, check):
        config.add_arguments(p)
    from sensor_sd.sim import fleet, inventory  # the simulators' flags only

    inventory.add_arguments(sub.add_parser("inventory-server", help="inventory simulator (port 1337)"))
    fleet.add_arguments(sub.add_parser("fleet", help="sensor fleet simulator (an HTTP proxy for sensor_N:9100)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    prometheus_client.disable_created_metrics()
    try:
        if args.command == "run":
            return asyncio.run(_run(settings, logger))
        if args.command == "once":
            return asyncio.run(_once(settings, logger, force=args.force))
        return asyncio.run(_check(settings, logger))
    except KeyboardInterrupt:
        return EXIT_OK


async def _run(settings: Settings, logger: logging.Logger) -> int:
    from sensor_sd import server

    metrics = Metrics()
    async with Client(settings) as client:
        discoverer = Discoverer(settings, client, metrics, logger)
        discoverer.load_file()
        app = server.make_app(discoverer, metrics)
        ssl_context = None
        if settings.web_config_file:
            from sensor_sd.webconfig import install, load_web_config

            ssl_context = install(app, load_web_config(settings.web_config_file))
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
        addr = settings.listen_address
        log.event(logger, logging.INFO, "sensor-sd started", version=__version__,
                  listen=f"{addr.host or '0.0.0.0'}:{addr.port}", sources=[s.display_url for s in settings.sources],
                  targets_file=str(settings.targets_file or ""), interval=settings.update_interval)
        polling = asyncio.create_task(discoverer.run(stop))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        # Abandon an in-flight poll: the file is only ever replaced atomically.
        polling.cancel()
        await asyncio.wait({polling}, timeout=STOP_GRACE_SECONDS)
        await runner.cleanup()
        log.event(logger, logging.INFO, "sensor-sd stopped")
    if polling.done() and not polling.cancelled() and polling.exception() is not None:
        raise polling.exception()  # type: ignore[misc]
    return EXIT_OK


async def _once(settings: Settings, logger: logging.Logger, *, force: bool) -> int:
    async with Client(settings) as client:
        discoverer = Discoverer(settings, client, Metrics(), logger)
        discoverer.load_file()
        results = await discoverer.poll_all(force=force)
    return EXIT_FAILED if any(r.result in ("error", "held") for r in results) else EXIT_OK


async def _check(settings: Settings, logger: logging.Logger) -> int:
    async with Client(settings) as client:
        discoverer = Discoverer(settings, client, Metrics(), logger)
        discoverer.load_file()
        before = {g.source: g.targets for g in (discoverer.snapshot.groups if discoverer.snapshot else ())}
        results = await asyncio.gather(*(discoverer.poll(s.name, force=True) for s in settings.sources))
    for result in results:
        _print_check(result, before.get(result.source, ()), discoverer)
    return EXIT_FAILED if any(r.result == "error" for r in results) else EXIT_OK


def _print_check(result: PollResult, before: tuple[str, ...], discoverer: Discoverer) -> None:
    if result.result == "error":
        print(f"{result.source}: inventory failed: {result.error}")
        return
    added, removed = result.added, result.removed
    print(f"{result.source}: {result.targets} targets, +{len(added)} -{len(removed)} against the current file")
    for target in added:
        print(f"+ {target}")
    for target in removed:
        print(f"- {target}")
    ratio = discoverer.settings.max_drop_ratio
    if before and len(removed) / len(before) > ratio:
        print(f"{result.source}: the drop guard would hold this change back "
              f"({len(removed)} of {len(before)} removed > MAX_DROP_RATIO {ratio:g})")

