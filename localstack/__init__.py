"""The local stack and the scale-out engines: tooling of the checkout, not part of the installed sensor-sd.

They read `deploy/` from the checkout and need PyYAML (the `test` extra);
tests, benchmarks and `make run` (`python -m localstack`) import them with
the repository root on the path.
"""
