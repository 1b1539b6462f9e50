"""Fixtures for the migration acceptance tests: a cached memtest image, and
failpoints disarmed after each test (nodes come from tests/conftest.py)."""
import pytest

from jmig.node import failpoints

from .helpers import build_image


@pytest.fixture(autouse=True)
def _disarm_failpoints():
    yield
    failpoints.disarm_all()


@pytest.fixture(scope="session")
def memtest4096_image() -> bytes:
    """The image of `memtest 4096 256` paused just after its first pass
    (16 MiB of verified patterns), built once: the first pass fills every
    page and takes ~14 s here, so the pgfault tests start from this image
    instead of spawning and filling again."""
    return build_image(["memtest", "4096", "256"], "memtest: pass 1 ok")
