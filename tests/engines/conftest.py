"""One local Ray instance for every Ray test of the session (2 CPUs, no dashboard)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ray: needs Ray (the swarmguard[ray] extra); one local instance per session")


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray", reason="the Ray backend needs the swarmguard[ray] extra")
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()
