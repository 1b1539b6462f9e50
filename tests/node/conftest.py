import pytest
import trio

from .cluster import Cluster
from .daemons import Daemon, make_secret


@pytest.fixture
async def cluster(tmp_path):
    """An in-process cluster; start nodes with `await cluster.start(name)`."""
    async with trio.open_nursery() as nursery:
        yield Cluster(nursery, tmp_path)
        nursery.cancel_scope.cancel()


@pytest.fixture
def daemons(tmp_path):
    """A factory of real jmig-node processes sharing one secret; all are
    killed at the end of the test."""
    secret = make_secret(tmp_path)
    started: list[Daemon] = []

    def start(name: str, *args, env=None, wait=True, host=None) -> Daemon:
        d = Daemon(tmp_path, secret, name, args, env=env, host=host)
        started.append(d)
        return d.start(wait=wait)

    start.secret_file = secret
    yield start
    for d in started:
        d.kill()
