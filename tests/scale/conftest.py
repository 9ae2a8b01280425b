"""Scale-out tests: many stores, and the real scraping engines (vmagent, Prometheus agent,
victoria-metrics, vmalert, Alertmanager) on loopback with ephemeral ports.

The parts are started through `localstack.engines` (shared with bench/scale.py) with the
`procs` fixture of tests/conftest.py, which stops every process by pid at teardown; the
directory's tests are marked `integration` there too.
"""
