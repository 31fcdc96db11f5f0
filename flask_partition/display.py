"""How nodes and errors are shown to people: URLs with the password masked,
errors on one line. Used by the health checks, the schema and shard reports,
and the ``flask partition`` commands.
"""

from __future__ import annotations

import sqlalchemy as sa

from .config import mask_uri
from .replicas import safe_message


def capitalized(text: str) -> str:
    """``text`` to start a sentence: ``bind 'x'`` becomes ``Bind 'x'``."""
    return text[:1].upper() + text[1:]


def display_url(url: sa.URL) -> str:
    """Render ``url`` for people: the password masked, a SQLite path as
    written (SQLAlchemy would escape the ``:`` of ``file:``).

    .. versionadded:: 0.1.0
    """
    if url.get_backend_name() == "sqlite" and url.database:
        query = "&".join(f"{k}={v}" for k, v in sorted(url.query.items()))
        return f"{url.drivername}:///{url.database}{'?' + query if query else ''}"
    return mask_uri(url)


def error_text(error: BaseException, *engines: sa.Engine) -> str:
    """One line about ``error``: the driver's exception, without the SQL,
    through :func:`~flask_partition.replicas.safe_message` for each of
    ``engines``, so their passwords are masked even where echoed bare.

    .. versionadded:: 0.1.0
    """
    cause = getattr(error, "orig", None) or error
    name = type(cause).__name__
    text = f"{name}: {str(cause).strip() or name}".splitlines()[0]
    for engine in engines:
        text = safe_message(text, engine)
    return mask_uri(text)


__all__ = ["capitalized", "display_url", "error_text"]
