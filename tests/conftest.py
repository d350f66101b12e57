"""Shared fixtures. The tiny world is built once per machine (cached under cache/) and reused."""

import pytest


@pytest.fixture(scope="session")
def tiny_world_dir():
    from common.tiny_world import build_tiny_world

    return build_tiny_world()


@pytest.fixture(scope="session")
def tiny_policy(tiny_world_dir):
    from common.model import load_policy

    return load_policy(str(tiny_world_dir))
