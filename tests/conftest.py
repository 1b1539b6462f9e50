"""Test-wide settings.

Property tests run the same examples on every run by default, so that a CI
failure means the code changed, not that a new random example came up.
JMIG_HYPOTHESIS=explore draws new examples (and JMIG_DIFF_RANDOM=1 does so
for the x86 differential tests)."""
import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile("explore" if os.environ.get("JMIG_HYPOTHESIS") == "explore" else "ci")

pytest_plugins = ["pytester"]           # tests/testing runs pytest on example tests


# Clusters come from jmig's own pytest plugin (jmig.testing.plugin), as
# users' tests get them; these two names are what jmig's tests call them.
@pytest.fixture
def cluster(jmig_nodes):
    """Nodes inside the test process: `await cluster.start("a")`."""
    return jmig_nodes


@pytest.fixture
def daemons(jmig_cluster):
    """Real node processes sharing one secret, started one at a time:
    `daemons("a", "--boot", "loop@4100 50")` (Cluster.start)."""
    return jmig_cluster().start
