# sensor-sd: two commands. `make run` starts the local stack, `make test` runs the tests.
# Everything they need (Debian packages, the virtualenv) is installed on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SENSORS ?= 100
# Extra flags for the local stack, e.g. RUN_ARGS="--churn --http-sd" (see: $(PY) -m localstack --help)
RUN_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-quick lint torture deps venv system-deps bench bench-quick bench-scale bench-container fuzz soak reliability-report screenshot clean

run: deps
	$(PY) -m localstack --sensors $(SENSORS) $(RUN_ARGS)

# Tiers are markers (tests/conftest.py marks whole directories): `make test` runs all but `slow`;
# `make test-quick` is the unit tier, which the virtualenv alone runs (no Debian package is installed or used).
test: deps lint
	$(PY) -m pytest -q -m "not slow"

# The type check of the package and the local stack (mypy --strict) and the linter (ruff), both
# configured in pyproject.toml.
lint: venv
	$(PY) -m mypy
	$(PY) -m ruff check src localstack tests bench

test-quick: venv
	$(PY) -m pytest -q -m "not integration and not system and not slow"

# The long crash torture: 1000 SIGKILLs while the inventory flips every 50 ms.
torture: deps
	$(PY) -m pytest -q tests/chaos/test_crash.py -m slow

deps: venv system-deps

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,lint]'
	touch $@

# Installs the real Prometheus/Alertmanager, victoria-metrics (vmagent, vmalert) and, for tests, wrk, chromium,
# Docker's engine, iptables and mmdebstrap (the live deployment tests) when missing.
system-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	[ -x /usr/bin/time ] || missing="$$missing time"; \
	command -v victoria-metrics >/dev/null || missing="$$missing victoria-metrics"; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v iptables >/dev/null || missing="$$missing iptables"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

bench: deps
	$(PY) bench/run.py

bench-quick: deps
	$(PY) bench/run.py --quick

# Scale-out figures (many stores, CPU at 1,000 stores, sensors per scraper) -> docs/scaling.md.
bench-scale: deps
	$(PY) bench/scale.py

# Image build time and size, time to healthy, memory per container: the compose stack under Docker
# (figures written into docs/deployment.md).
bench-container: deps
	$(PY) bench/container.py

fuzz: venv
	$(PY) -m pytest -q tests/fuzz -m slow -p no:cacheprovider --hypothesis-profile=long

soak: deps
	$(PY) tests/chaos/soak.py

# docs/RELIABILITY.md's generated blocks from the tests that measure (crash torture, hostile clients),
# with the commit they measured; SLOW=1 adds the 1000-kill torture (~10 min).
SLOW ?=
reliability-report: deps
	$(PY) bench/reliability.py --run $(if $(SLOW),--slow)

screenshot: deps
	SENSOR_SD_SCREENSHOT_DIR=docs $(PY) -m pytest -q tests/integration/test_status_browser.py tests/integration/test_stack_pages_browser.py

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis
