"""The live web view of a cluster (`jmigctl web`, docs/web.md): auth.py
(token, sessions, same-origin rule), poller.py (the nodes, asked only while
someone watches), app.py (Starlette routes and the event stream, served by
Hypercorn's trio worker), static/ (the page)."""
from .auth import token_for

__all__ = ["token_for"]
