"""Database URLs in the configuration: parsing them with errors that name
the key, resolving SQLite paths, and masking passwords in anything shown.
"""

from __future__ import annotations

import os
import re
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

_PASSWORD_IN_URI = re.compile(r"(?P<head>://[^:/@\s]*:)[^\s/]*@")
# Malformed URIs ("postgresql//user:pw@host") still carry "user:password@".
_PASSWORD_LOOSE = re.compile(r"(?P<head>[^:/@\s]+:)(?!\*\*\*@)[^:/@\s]+@")


def mask_uri(value: object) -> str:
    """Return ``value`` as text with any password replaced by ``***``.

    Works on :class:`sqlalchemy.URL` objects and on strings that do not even
    parse as a URL, so error messages never show a password.

    :param value: A URL, a string or anything else found in the config.
    """
    if isinstance(value, sa.URL):
        return value.render_as_string(hide_password=True)
    masked = _PASSWORD_IN_URI.sub(r"\g<head>***@", str(value))
    return _PASSWORD_LOOSE.sub(r"\g<head>***@", masked)


def in_memory(url: sa.URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


def sqlite_file(url: sa.URL) -> str | None:
    """Return the file path of a SQLite URL, ``None`` for an in-memory one.

    Strips the ``file:`` prefix of URI filenames (``uri=true``).

    :param url: A URL whose backend is SQLite.
    """
    if in_memory(url):
        return None
    database = url.database or ""
    return database[len("file:") :] if database.startswith("file:") else database


def quote_key(key: str) -> str:
    """Quote a key for messages: 'PARTITION_REPLICAS[0]', but bind and shard
    keys read PARTITION_BINDS['auth']['replicas'] as written in Python.
    """
    nested = ("PARTITION_BINDS[", "PARTITION_SHARDS[", "SQLALCHEMY_BINDS[")
    return key if key.startswith(nested) else f"'{key}'"


def engine_options(value: object, key: str) -> dict[str, t.Any]:
    if value is None:
        return {}
    if not isinstance(value, t.Mapping):
        raise TypeError(
            f"{quote_key(key)} must be a dict of 'create_engine' arguments,"
            f" got {value!r}."
        )
    return dict(value)


def replica_urls(
    value: object, key: str, instance_path: str | None
) -> tuple[sa.URL, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{quote_key(key)} must be a list of database URIs,"
            f" got {mask_uri(value)!r}."
        )
    return tuple(
        parse_url(item, f"{key}[{index}]", instance_path, replica=True)
        for index, item in enumerate(value)
    )


def parse_url(
    value: object, key: str, instance_path: str | None, *, replica: bool = False
) -> sa.URL:
    key = quote_key(key)
    if isinstance(value, sa.URL):
        url = value
    elif isinstance(value, str):
        try:
            url = sa.make_url(value)
        except sa_exc.ArgumentError:
            raise ValueError(
                f"{key} is not a valid database URI: {mask_uri(value)!r}. Expected"
                " 'dialect+driver://user:password@host/database'."
            ) from None
    else:
        raise TypeError(
            f"{key} must be a database URI string, got {type(value).__name__}"
            f" {mask_uri(value)!r}."
        )
    if url.get_backend_name() == "sqlite":
        url = _sqlite_url(url, instance_path, replica=replica)
    return url


def _sqlite_url(url: sa.URL, instance_path: str | None, *, replica: bool) -> sa.URL:
    """Resolve a relative SQLite path in the instance folder, and open a
    replica read-only.

    SQLite only honours ``mode=ro`` on URI filenames, so a replica written as
    ``sqlite:///app.db`` or ``sqlite:///app.db?mode=ro`` becomes
    ``sqlite:///file:/abs/app.db?mode=ro&uri=true``. Writes sent to it then
    fail with "attempt to write a readonly database", as a real replica would.
    """
    path = sqlite_file(url)
    if path is None:
        return url
    uri_form = url.query.get("uri") == "true" or (url.database or "").startswith(
        "file:"
    )
    if instance_path is not None and not os.path.isabs(path):
        path = os.path.join(instance_path, path)
    if not (uri_form or replica):
        return url.set(database=path)
    query = dict(url.query)
    query["uri"] = "true"
    if replica:
        query["mode"] = "ro"
    return url.set(database=f"file:{path}", query=query)
