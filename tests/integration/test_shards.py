"""`/targets?shard=I&shards=N` splits the fleet exactly as a Prometheus `hashmod` relabel rule does."""

from __future__ import annotations

import pytest

from sensor_sd.targets import hashmod


@pytest.mark.parametrize("total", [2, 3])
def test_sd_shards_match_prometheus_hashmod(http_sd_env, total: int) -> None:  # type: ignore[no-untyped-def]
    env = http_sd_env
    full = env.sd_targets()
    shards = [env.sd_targets(f"?shard={i}&shards={total}") for i in range(total)]
    assert set().union(*shards) == full
    assert sum(map(len, shards)) == len(full)  # disjoint
    assert all(shards), "every shard gets some of the 100+ targets"

    def prometheus_agrees() -> bool:
        return all(env.prometheus_targets(f"sd-shard-{total}-{i}") == shards[i]
                   and env.prometheus_targets(f"hashmod-{total}-{i}") == shards[i] for i in range(total))

    env.wait(prometheus_agrees, f"Prometheus shard jobs for N={total} to match /targets?shard=I&shards={total}")
    for i, part in enumerate(shards):
        assert {t for t in full if hashmod(t, total) == i} == part
