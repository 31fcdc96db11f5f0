"""What every PostgreSQL test needs before it starts servers."""

from __future__ import annotations

from flask_partition.testing import require_postgres as require_postgres
