"""The web process's poller against an in-process node: a one-off look
(GET /api/state) that comes while the loop is polling shares the kept
connection with it, one request at a time, and neither sees an error."""
import trio

from jmig.web.poller import Poller


async def test_one_off_looks_during_the_polling_loop_see_no_errors(cluster):
    a = await cluster.start("a", boot=[("loop", ("50",), 4100)])
    poller = Poller([cluster.addr(a)], cluster.secret, interval=0.05)
    poller.attach()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run)
        looks = 0
        while poller.polls <= 20 and looks < 600:   # looks land inside the loop's polls
            looks += 1
            await poller.look()
            (node,) = poller.view["nodes"]
            assert "error" not in node, node
            assert [e["envid"] for e in node["envs"]] == [4100]
            await trio.sleep(0.013)
        nursery.cancel_scope.cancel()
    assert poller.polls > 20
