"""Kept control connections from this node to the other nodes of its
cluster (a ControlPool whose connections leave from this node's address and
introduce it by name).  Membership's heartbeats and the requests about envs
on other nodes (node/remote.py) share them."""
from __future__ import annotations

from ..proto.control import CONTROL_OFFSET, ControlClient, ControlPool
from ..proto.wire import parse_node

CALL_SECONDS = 3.0                 # one request to one node, connecting included


class Peers(ControlPool):
    def __init__(self, node):
        async def opener(addr: str, timeout: float) -> ControlClient:
            host, port = parse_node(addr)
            return ControlClient(await node.connect(host, port + CONTROL_OFFSET, "control",
                                                    timeout=timeout))
        super().__init__(opener)

    def client(self, addr: str, timeout: float = CALL_SECONDS):
        return super().client(addr, timeout)

    async def call(self, addr: str, op: str, args: dict, timeout: float = CALL_SECONDS):
        return await super().call(addr, op, args, timeout)
