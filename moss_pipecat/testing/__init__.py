"""Test tooling shipped with the package: conforming tiny fixture sets made by our own code.

See ``moss_pipecat.testing.fixtures`` (and ``scripts/make_fixtures.py``).
"""

from moss_pipecat.testing.fixtures import FixtureSpec, make_fixture_set

__all__ = ["FixtureSpec", "make_fixture_set"]
