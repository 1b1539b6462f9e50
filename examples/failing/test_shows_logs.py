"""A test that fails on purpose, to show what a failing cluster test
reports: after the traceback, each node's last console lines and log lines
(`pytest examples/failing`; jmig's own tests run it and check that)."""


def test_fails_and_shows_the_nodes_console_and_log(jmig_cluster):
    cluster = jmig_cluster(nodes=1)
    node = cluster.nodes[0]
    cluster.spawn(node, "hello")
    node.wait_for_console("hello, world")
    assert "goodbye" in node.console(), "hello said hello, not goodbye"
