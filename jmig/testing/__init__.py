"""Real jmig clusters for tests, and the pytest plugin that serves them
(jmig.testing.plugin, registered as `jmig` through pytest11).

    Cluster, Link         real node processes and the links between them
    NodeProcess           one jmig-node process
    Proxy, ProxyThread    the TCP proxy behind links, for trio and for threads
    InProcessCluster      nodes inside the test's process (white-box tests)
    Network               hosts in network namespaces
See docs/testing.md.  Names are imported when first used, so that a small
tool of this package (e.g. `python -m jmig.testing.attacks`) starts fast."""
import importlib

_WHERE = {
    "Cluster": "cluster", "CtlError": "cluster", "Link": "cluster", "make_secret": "cluster",
    "next_host": "cluster",
    "InProcessCluster": "inprocess", "console_of": "inprocess", "wait_for": "inprocess",
    "Network": "netns", "NetnsUnavailable": "netns",
    "PORT": "process", "NodeError": "process", "NodeProcess": "process",
    "Proxy": "proxy", "ProxyThread": "proxy",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
