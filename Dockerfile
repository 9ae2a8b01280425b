# syntax=docker/dockerfile:1
# sensor-sd: Prometheus service discovery for sensor fleets.
# Build stage: install the project and its dependencies into a venv, so the
# runtime image carries no pip cache, compiler or build files.
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/sensor-sd
COPY pyproject.toml README.md ./
COPY src ./src
# Dependencies are bounded by pyproject.toml; the project itself is local.
RUN /opt/sensor-sd/bin/pip install --no-cache-dir ".[web]"

# Runtime stage: same base (the venv's interpreter symlink points at
# /usr/local/bin/python3.11), nothing but the venv added.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="sensor-sd" \
      org.opencontainers.image.description="Prometheus service discovery for fleets of embedded sensors" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/sensor-sd /opt/sensor-sd

# The only writable path: the targets file directory, owned by nobody so that
# a fresh named volume mounted here inherits that ownership.
RUN mkdir -p /shared && chown 65534:65534 /shared

# Read-only root fs: no .pyc writes, unbuffered logs straight to stdout.
ENV PATH=/opt/sensor-sd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TARGETS_FILE=/shared/targets.json \
    LISTEN_ADDRESS=:8080

VOLUME ["/shared"]
EXPOSE 8080
USER 65534:65534

# stdlib only (no curl in the image); /-/healthy means the process serves.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/-/healthy', timeout=4)"]

ENTRYPOINT ["sensor-sd"]
CMD ["run"]
