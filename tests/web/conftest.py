"""The web view's tests use the node tests' harness (in-process clusters and
real jmig-node processes) as it is; this is the only place that imports it."""
from tests.node.conftest import cluster, daemons
from tests.node.daemons import Daemon, make_secret

__all__ = ["cluster", "daemons", "Daemon", "make_secret"]
