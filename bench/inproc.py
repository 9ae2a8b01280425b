"""In-process measurements, each run in its own child process so its memory is its own.

    python bench/inproc.py daemon  URL TARGETS_FILE RUNS   # steady-state sync inside a Discoverer
    python bench/inproc.py floor   URL TARGETS_FILE RUNS   # urllib + orjson + render + write, no validation
    python bench/inproc.py profile URL TARGETS_FILE OUT.prof

Each prints one JSON object on stdout. `daemon` and `profile` change the
inventory between polls (10 added, 5 removed through the simulator's admin
API, outside the timed region), like a store where sensors come and go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import orjson


def _rss_kib(key: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    return 0


def _churn(url: str) -> None:
    base = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    for path, body in (("/admin/sensors/remove", {"count": 5}), ("/admin/sensors/add", {"count": 10})):
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            resp.read()


def _discoverer(url: str, targets_file: str):  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry

    from sensor_sd import config
    from sensor_sd.inventory import Client
    from sensor_sd.metrics import Metrics
    from sensor_sd.scheduler import Discoverer

    settings = config.load({}, {"INVENTORY_URL": f"inv={url}", "TARGETS_FILE": targets_file,
                                "UPDATE_INTERVAL": "30", "REQUEST_TIMEOUT": "120", "LOG_FORMAT": "text",
                                "LOG_LEVEL": "warning", "MAX_DROP_RATIO": "1"})
    logger = logging.getLogger("sensor_sd.bench")
    logger.setLevel(logging.WARNING)
    client = Client(settings)
    return settings, client, lambda c: Discoverer(settings, c, Metrics(CollectorRegistry()), logger)


async def _daemon(url: str, targets_file: str, runs: int) -> dict[str, object]:
    settings, client, make = _discoverer(url, targets_file)
    base_rss = _rss_kib()
    async with client as c:
        d = make(c)
        first = time.perf_counter()
        await d.poll("inv")
        await d.publish()
        first = time.perf_counter() - first
        polls, publishes, totals = [], [], []
        for _ in range(runs):
            _churn(url)
            t0 = time.perf_counter()
            result = await d.poll("inv")
            t1 = time.perf_counter()
            await d.publish()
            t2 = time.perf_counter()
            assert result.result == "success", result
            polls.append(t1 - t0)
            publishes.append(t2 - t1)
            totals.append(t2 - t0)
        targets = d.snapshot.count if d.snapshot else 0
    return {"first": first, "poll": polls, "publish": publishes, "total": totals, "targets": targets,
            "rss_before_kib": base_rss, "rss_after_kib": _rss_kib(), "peak_kib": _rss_kib("VmHWM")}


def _floor(url: str, targets_file: str, runs: int) -> dict[str, object]:
    """The least one sync can cost in Python: no validation, no sort, no diff (durable write timed apart)."""
    path = Path(targets_file)
    labels = {"__metrics_path__": "/metrics", "source": "inv"}
    phases: dict[str, list[float]] = {"fetch": [], "parse": [], "render": [], "write": [], "fsync": []}
    base_rss = _rss_kib()
    for _ in range(runs):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as resp:  # noqa: S310 - loopback
            body = resp.read()
        t1 = time.perf_counter()
        hosts = orjson.loads(body)
        del body
        t2 = time.perf_counter()
        data = orjson.dumps([{"targets": [h + ":9100" for h in hosts], "labels": labels}])
        del hosts
        t3 = time.perf_counter()
        tmp = path.with_name(f".{path.name}.floor.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        t4 = time.perf_counter()
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        t5 = time.perf_counter()
        del data, view
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            phases[key].append(value)
    total = [sum(v) for v in zip(*phases.values())]
    no_fsync = [t - f for t, f in zip(total, phases["fsync"])]
    return {"total": total, "no_fsync": no_fsync, "phases": phases, "rss_before_kib": base_rss,
            "peak_kib": _rss_kib("VmHWM")}


async def _profile(url: str, targets_file: str, out: str) -> dict[str, object]:
    """cProfile one steady-state sync; worker-thread steps run inline so the profiler sees them."""
    import cProfile
    import pstats

    async def inline(func, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        return func(*args, **kwargs)

    asyncio.to_thread = inline  # type: ignore[assignment]  # this child process only
    settings, client, make = _discoverer(url, targets_file)
    async with client as c:
        d = make(c)
        await d.poll("inv")
        await d.publish()
        _churn(url)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        await d.poll("inv")
        await d.publish()
        prof.disable()
        wall = time.perf_counter() - t0
    prof.dump_stats(out)
    stats = pstats.Stats(out)
    wanted = {
        "fetch (aiohttp GET + capped read)": ("inventory.py", "fetch"),
        "validate_body (decode, checks, split)": ("decode.py", "validate_body"),
        "  sort + dedup check + tuple": ("decode.py", "sorted_unique"),
        "diff (block merge against previous)": ("poller.py", "diff"),
        "Snapshot.build (render + etag)": ("targets.py", "build"),
        "  render (orjson.dumps)": ("targets.py", "render"),
        "write_atomic (write, fsync, rename, fsync dir)": ("publish/file.py", "write_atomic"),
    }
    stages: dict[str, float] = {}
    for label, (fname, func) in wanted.items():
        stages[label] = sum(v[3] for (f, _, name), v in stats.stats.items()  # type: ignore[attr-defined]
                            if name == func and f.endswith(fname))
    top = sorted(((v[2], v[3], f"{os.path.basename(f)}:{line}({name})" if line else name)
                  for (f, line, name), v in stats.stats.items()), reverse=True)[:12]  # type: ignore[attr-defined]
    return {"wall": wall, "stages": stages, "top": [{"tottime": t, "cumtime": c, "function": n} for t, c, n in top]}


def main(argv: list[str]) -> int:
    mode, url, targets_file = argv[0], argv[1], argv[2]
    if mode == "daemon":
        result = asyncio.run(_daemon(url, targets_file, int(argv[3])))
    elif mode == "floor":
        result = _floor(url, targets_file, int(argv[3]))
    elif mode == "profile":
        result = asyncio.run(_profile(url, targets_file, argv[3]))
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
