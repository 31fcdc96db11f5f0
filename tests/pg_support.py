"""What every PostgreSQL test needs before it starts servers."""

from __future__ import annotations

import os

import pytest

from flask_partition.testing import unavailable_reason


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL cannot run here; in CI fail it
    instead, so a missing server never passes silently.
    """
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs PostgreSQL: {reason}")
    pytest.skip(reason)
