"""The deployment, live: a real Docker engine, the project image, the compose stack.

Session fixtures: `engine` (the daemon: the one that answers, or one started
here and stopped at the end), `images` (stand-in bases, reused while tagged,
and the project image built from the unchanged Dockerfile). What was
measured is printed at the end of the run (and written to
docs/deployment.md only by `make bench-container`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docker_engine import (  # noqa: E402
    REPO, Engine, Figures, Images, NoEngine, ensure_images, image_size_bytes, remove_stale_projects,
    start_engine,
)

GRAFANA_NOTE = ("grafana: local stand-in answering /api/health only (no Grafana package is reachable); "
                "the dashboard is tested through its PromQL on the stack's real Prometheus")


FIGURES = pytest.StashKey[Figures]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = Figures()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash[FIGURES]
    if figures.lines:
        terminalreporter.section("deployment, live (tests/deploy_live)")
        for line in [*figures.lines, GRAFANA_NOTE]:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    return request.config.stash[FIGURES]


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory, figures: Figures) -> Iterator[Engine]:
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    try:
        eng = start_engine(log)
    except NoEngine as exc:
        pytest.skip(f"this machine cannot run containers: {exc}")
    try:
        origin = f"started here (pid {eng.started.pid}), stopped at the end" if eng.started else "already running"
        figures.add(f"docker engine {eng.version}, storage driver {eng.driver}, {origin}")
        stale = remove_stale_projects(eng)
        if stale:
            figures.add(f"removed projects left by killed runs: {', '.join(stale)}")
        yield eng
    finally:
        eng.stop()


def project_tag() -> str:
    return str(yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["sensor-sd"]["image"])


@pytest.fixture(scope="session")
def images(engine: Engine, tmp_path_factory: pytest.TempPathFactory, figures: Figures) -> Images:
    tag = project_tag()
    # The project's Dockerfile as it is, classic builder; its layer cache is used as found.
    report, seconds = ensure_images(engine, tmp_path_factory.mktemp("stand-ins"), tag)
    built = ", ".join(f"{t} {secs:.0f}s" for t, secs in report.built.items())
    figures.add(f"stand-in images: built {built or 'none'}; reused {len(report.reused)}"
                + (f"; real images used as found: {', '.join(report.foreign)}" if report.foreign else ""))
    figures.add(f"project image {tag}: build {seconds:.1f}s (layer cache as found), "
                f"size {image_size_bytes(engine, tag) / 1e6:.0f} MB")
    return Images(tag, report)
