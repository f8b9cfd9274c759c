"""What to do when a test needs something this machine lacks (Chromium, PostgreSQL).

Locally such a test skips with a reason saying how to install the missing part. Under
``NBTRACK_REQUIRE_ALL=1`` (CI's ``.ci/run`` sets it) the same reason fails the test instead, so CI
cannot go green without the browser and team-server tests.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL = "NBTRACK_REQUIRE_ALL"


def required() -> bool:
    """Whether nothing may skip for want of a part (``NBTRACK_REQUIRE_ALL=1``)."""
    return os.environ.get(REQUIRE_ALL, "") not in ("", "0")


def missing(reason: str) -> None:
    """Skip the current test for ``reason``, or fail it with that reason when nothing may skip."""
    if required():
        pytest.fail(f"{reason} ({REQUIRE_ALL}=1: nothing may skip)", pytrace=False)
    pytest.skip(reason)
