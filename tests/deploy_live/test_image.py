"""The project image alone: `docker run --read-only` serves /-/healthy as nobody, and stops at once."""

from __future__ import annotations

import time

from docker_engine import Engine, Images, poll

from localstack.net import http_get


def test_read_only_image_alone_serves_healthy_and_stops_on_sigterm(engine: Engine, images: Images) -> None:
    # No inventory at all (a closed port): the process must still serve its health endpoint.
    cid = engine.docker("run", "--detach", "--read-only", "--publish", "127.0.0.1::8080",
                        "--env", "INVENTORY_URL=http://127.0.0.1:1/inventory", images.project).stdout.strip()
    try:
        out = engine.docker("port", cid, "8080/tcp").stdout.split()[0]
        assert out.startswith("127.0.0.1:"), out
        url = f"http://{out}/-/healthy"

        def healthy() -> bool:
            state = engine.docker("inspect", "--format", "{{.State.Running}}", cid).stdout.strip()
            assert state == "true", engine.docker("logs", cid).stderr[-2000:]
            return http_get(url)[0] == 200

        poll(healthy, 60, "the image to serve /-/healthy")
        assert engine.docker("exec", cid, "id", "-u").stdout.strip() == "65534"
        assert engine.docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", cid).stdout.strip() == "true"
        began = time.monotonic()
        engine.docker("stop", "--time", "10", cid)
        elapsed = time.monotonic() - began
        code = engine.docker("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip()
        assert code == "0" and elapsed < 2, (code, elapsed)
    finally:
        engine.docker("rm", "--force", "--volumes", cid, check=False)  # its anonymous /shared volume too
