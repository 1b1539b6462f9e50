"""Test-wide settings.

Property tests run the same examples on every run by default, so that a CI
failure means the code changed, not that a new random example came up.
JMIG_HYPOTHESIS=explore draws new examples (and JMIG_DIFF_RANDOM=1 does so
for the x86 differential tests)."""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile("explore" if os.environ.get("JMIG_HYPOTHESIS") == "explore" else "ci")
