"""jmigctl's connection to a node's control port (proto/control.py)."""
from __future__ import annotations

from ..proto.control import ControlClient, RemoteError

DEFAULT_NODE = "127.0.0.1:50001"

__all__ = ["DEFAULT_NODE", "ControlClient", "RemoteError"]
