"""Simulators of the inventory service and the sensor fleet, for tests, benchmarks and the local stack."""
