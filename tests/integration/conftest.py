"""Integration fixtures: one local Ray for the whole session (it depends on the S3 server so that
workers inherit the AWS_* environment pointing at it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import S3Server


@pytest.fixture(scope="session")
def ray_session(s3_server: S3Server) -> Iterator[None]:
    """A local Ray with 2 CPUs and a small object store, shut down at the end of the session."""
    import ray

    ray.init(
        # "local": always a fresh Ray of our own, never a `ray start` cluster running on this machine.
        address="local",
        num_cpus=2,
        object_store_memory=512 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
