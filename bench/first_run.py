#!/usr/bin/env python3
"""What the first `make run` / `make test` installs, measured: the figures in README's "First run" section.

    .venv/bin/python bench/first_run.py               # sizes (about 20 s: apt's resolver runs 3 times)
    .venv/bin/python bench/first_run.py --time-venv   # and time a fresh virtualenv, pip cache off (downloads)

Debian packages: what `make`'s system-deps would install on a minimal Debian
(only packages of priority required/important, plus python3, python3-venv and
make, which `make` itself needs), by apt's own resolver (`apt-get -s` against
a status file holding just those, taken from this machine's dpkg database),
with the download and installed sizes apt publishes. The virtualenv: its
size on disk, and per installed distribution.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The Makefile's system-deps, and what has to be there before `make` runs at all.
SYSTEM_DEPS = ("prometheus", "prometheus-alertmanager", "wrk", "chromium", "strace", "time")
PREREQUISITES = ("python3", "python3-venv", "make")
DPKG_STATUS = Path("/var/lib/dpkg/status")


@dataclass(frozen=True)
class AptSet:
    packages: tuple[str, ...]
    download_bytes: int
    installed_kib: int


def _stanzas() -> dict[str, str]:
    installed = {}
    for stanza in DPKG_STATUS.read_text().strip().split("\n\n"):
        name = re.search(r"^Package: (\S+)", stanza, re.M)
        if name and "Status: install ok installed" in stanza:
            installed[name.group(1)] = stanza
    return installed


def _minimal_status(path: Path) -> None:
    """A dpkg status file with the required/important packages and what they depend on, as installed here."""
    installed = _stanzas()
    provided = {}
    for name, stanza in installed.items():
        line = re.search(r"^Provides: (.*)$", stanza, re.M)
        for item in (line.group(1).split(",") if line else []):
            provided.setdefault(item.strip().split()[0], name)

    def depends(stanza: str) -> list[str]:
        out = []
        for field in ("Pre-Depends", "Depends"):
            line = re.search(rf"^{field}: (.*)$", stanza, re.M)
            for group in (line.group(1).split(",") if line else []):
                names = [alt.strip().split()[0].split(":")[0] for alt in group.split("|")]
                found = [n if n in installed else provided[n] for n in names if n in installed or n in provided]
                out += found[:1]
        return out

    keep = {n for n, s in installed.items() if re.search(r"^Priority: (required|important)$", s, re.M)}
    todo = list(keep)
    while todo:
        for dep in depends(installed[todo.pop()]):
            if dep not in keep:
                keep.add(dep)
                todo.append(dep)
    path.write_text("\n\n".join(installed[n] for n in sorted(keep)) + "\n")


def _would_install(status: Path, packages: tuple[str, ...]) -> set[str]:
    out = subprocess.run(["apt-get", "-s", "-o", f"Dir::State::status={status}", "--no-install-recommends",
                          "install", *packages], capture_output=True, text=True, check=True)
    return set(re.findall(r"^Inst (\S+)", out.stdout, re.M))


def _sizes(packages: set[str]) -> AptSet:
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", *sorted(packages)], capture_output=True,
                          text=True, check=True).stdout
    return AptSet(tuple(sorted(packages)), sum(int(x) for x in re.findall(r"^Size: (\d+)", show, re.M)),
                  sum(int(x) for x in re.findall(r"^Installed-Size: (\d+)", show, re.M)))


def apt_sets() -> dict[str, AptSet]:
    """{"all": everything system-deps installs, "chromium": chromium's share} beyond a minimal Debian."""
    with tempfile.TemporaryDirectory() as tmp:
        status = Path(tmp) / "status"
        _minimal_status(status)
        base = _would_install(status, PREREQUISITES)
        everything = _would_install(status, (*PREREQUISITES, *SYSTEM_DEPS)) - base
        chromium = _would_install(status, (*PREREQUISITES, "chromium")) - base
    return {"all": _sizes(everything), "chromium": _sizes(chromium)}


def du_bytes(path: Path) -> int:
    """Disk usage of a tree (allocated blocks, as du counts them; hard links once)."""
    seen, total = set(), 0
    for root, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def venv_dists() -> list[tuple[int, str]]:
    """(bytes, name) of each distribution installed in the running interpreter's environment, largest first."""
    sizes = []
    for dist in importlib.metadata.distributions():
        total = 0
        for f in dist.files or []:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                total += p.stat().st_size
        sizes.append((total, dist.metadata["Name"]))
    return sorted(sizes, reverse=True)


def time_fresh_venv() -> float:
    """Seconds to build `make venv`'s environment from nothing (pip's cache off, so everything downloads)."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        began = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # built on the base interpreter
        env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--upgrade", "pip"], check=True, env=env)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", f"{REPO}[test,lint]"], check=True, env=env)
        return time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time-venv", action="store_true", help="also time a fresh virtualenv (downloads every wheel)")
    args = p.parse_args(argv)
    mb = 1_000_000
    venv = Path(sys.prefix)
    print(f"virtualenv {venv.name}: {du_bytes(venv) / mb:.0f} MB on disk")
    for size, name in venv_dists()[:6]:
        print(f"  {name:<22} {size / mb:6.0f} MB")
    if shutil.which("apt-get") and DPKG_STATUS.is_file():
        sets = apt_sets()
        for key, label in (("all", " ".join(SYSTEM_DEPS)), ("chromium", "of which chromium")):
            s = sets[key]
            print(f"Debian packages ({label}): {len(s.packages)} packages, {s.download_bytes / mb:.0f} MB to "
                  f"download, {s.installed_kib * 1024 / mb:.0f} MB installed (beyond a minimal Debian)")
    else:
        print("Debian packages: not measured (no apt-get / dpkg here)")
    if args.time_venv:
        print(f"fresh virtualenv, pip cache off: {time_fresh_venv():.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
