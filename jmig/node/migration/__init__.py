"""The migration engine: migrate, save and load as jobs of a node
(engine.py, jobs.py), one session type for both sides of every method
(session.py), and one module per method for what travels between begin
and end: normal.py, pgfault.py (with origin.py, the page server, and
pager.py, the destination's pager), precopy.py; save and load are the
same steps with a file as the peer (filelink.py)."""
from .base import Hold, MigrationError
from .engine import Migrations
from .jobs import Job, JobState

__all__ = ["Hold", "Job", "JobState", "MigrationError", "Migrations"]
