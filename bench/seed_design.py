#!/usr/bin/env python3
"""The seed design that sensor-sd replaces, re-implemented as a benchmark yardstick (not the product).

What the original design did, and nothing more, so its cost can be measured
on the same machine in the same run: a `requests` session whose adapter
retries GETs (urllib3 Retry: 3 attempts, backoff factor 1, on 429 and 5xx),
`response.json()`, a check that it is a list, one target group (the port
appended to every host; `__metrics_path__`, `job` and `environment` labels),
`json.dump(indent=2)` into `FILE.tmp` and `os.replace`. No validation, no
last known good, no drop guard, no fsync, no metrics, no HTTP endpoint.

    python bench/seed_design.py INVENTORY_URL TARGETS_FILE        # one sync, then exit
    python bench/seed_design.py INVENTORY_URL TARGETS_FILE 30     # a sync every 30 s until killed

Needs `requests` (the `test` extra).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

PORT = "9100"
METRICS_PATH = "/metrics"
LABELS = {"__metrics_path__": METRICS_PATH, "job": "sensors", "environment": "production"}


def make_session() -> requests.Session:
    """A session that retries failed GETs with exponential backoff, as the seed's did."""
    retry = Retry(total=3, backoff_factor=1, status_forcelist=(429, 500, 502, 503, 504), allowed_methods=("GET",))
    session = requests.Session()
    for scheme in ("http://", "https://"):
        session.mount(scheme, HTTPAdapter(max_retries=retry))
    return session


def groups_for(hosts: list[Any]) -> list[dict[str, Any]]:
    return [{"targets": [f"{host}:{PORT}" for host in hosts], "labels": dict(LABELS)}]


def sync_once(session: requests.Session, url: str, path: str) -> None:
    """Fetch, wrap and write; any error propagates (the seed had no last known good to fall back on)."""
    answer = session.get(url, timeout=10)
    answer.raise_for_status()
    hosts = answer.json()
    if not isinstance(hosts, list):
        raise ValueError(f"inventory answered a {type(hosts).__name__}, not a list")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        json.dump(groups_for(hosts), out, indent=2)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: seed_design.py INVENTORY_URL TARGETS_FILE [LOOP_SECONDS]", file=sys.stderr)
        return 2
    url, path = argv[0], argv[1]
    every = float(argv[2]) if len(argv) == 3 else 0.0
    session = make_session()
    if not every:
        sync_once(session, url, path)
        return 0
    while True:
        try:
            sync_once(session, url, path)
        except Exception as exc:  # noqa: BLE001 - the seed logged any failure and tried again next round
            print(f"sync failed: {exc}", file=sys.stderr, flush=True)
        time.sleep(every)  # the seed's fixed loop period


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
