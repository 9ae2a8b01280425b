"""Shared fixtures: real processes on loopback, ephemeral ports, temporary directories."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from sensor_sd.sim.stack import Ports, Stack, StackConfig

settings.register_profile("default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build a Stack with ephemeral ports in tmp_path; everything it started is stopped afterwards."""
    stacks: list[Stack] = []

    def factory(**kwargs: Any) -> Stack:
        kwargs.setdefault("ports", Ports.ephemeral())
        workdir = tmp_path / f"stack{len(stacks)}"
        stack = Stack(StackConfig(workdir=workdir, **kwargs))
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()
