"""Flask-SQLAlchemy's database keys (``SQLALCHEMY_*``), read as
Flask-SQLAlchemy 3.x reads them, for apps that change only their import.
"""

from __future__ import annotations

import sys
import typing as t
import warnings

import sqlalchemy as sa

from .settings import ClusterConfig
from .settings import make_cluster
from .urls import engine_options
from .urls import mask_uri
from .urls import parse_url

#: Flask-SQLAlchemy's database keys, read when no :data:`PARTITION_KEYS` key
#: is set.
SQLALCHEMY_KEYS: t.Final = (
    "SQLALCHEMY_DATABASE_URI",
    "SQLALCHEMY_BINDS",
    "SQLALCHEMY_ENGINE_OPTIONS",
    "SQLALCHEMY_ECHO",
)
#: The ``PARTITION_*`` keys that name databases; they cannot be mixed with
#: :data:`SQLALCHEMY_KEYS`.
PARTITION_KEYS: t.Final = (
    "PARTITION_DATABASE_URI",
    "PARTITION_REPLICAS",
    "PARTITION_BINDS",
    "PARTITION_SHARDS",
    "PARTITION_ENGINE_OPTIONS",
)
# Flask-SQLAlchemy features Flask-Partition does not have, and what is lost.
_UNSUPPORTED_KEYS = {
    "SQLALCHEMY_RECORD_QUERIES": "'get_recorded_queries()' is not available",
    "SQLALCHEMY_TRACK_MODIFICATIONS": (
        "the 'models_committed' and 'before_models_committed' signals are not sent"
    ),
}


def read_sqlalchemy_config(
    config: t.Mapping[str, t.Any], instance_path: str | None
) -> dict[str | None, ClusterConfig] | None:
    """Read Flask-SQLAlchemy's database keys as Flask-SQLAlchemy 3.x does.

    ``SQLALCHEMY_DATABASE_URI`` is the default cluster's primary, with
    ``SQLALCHEMY_ENGINE_OPTIONS``. Each ``SQLALCHEMY_BINDS`` value is a URI or
    a dict ``{"url": ..., **engine_options}``; the global engine options do
    not apply to binds. ``SQLALCHEMY_ECHO`` sets ``echo`` and ``echo_pool``
    of every engine that does not set them. MySQL URIs get
    ``charset=utf8mb4`` and ``pool_recycle=7200`` unless given. There are no
    replicas and no shards: those need the ``PARTITION_*`` keys.

    ``SQLALCHEMY_RECORD_QUERIES`` and ``SQLALCHEMY_TRACK_MODIFICATIONS`` set
    to a true value warn (:exc:`UserWarning`) that the feature is missing;
    the warning points at the first caller outside Flask-Partition, the
    application's ``PartitionDB(app)`` or ``init_app(app)``.

    :func:`parse_config` calls it; it is also importable from
    :mod:`flask_partition.compat`.

    :param config: The application's config.
    :param instance_path: The folder relative SQLite paths are resolved in.
    :return: The clusters by bind key, without ``None`` when only
        ``SQLALCHEMY_BINDS`` is set; ``None`` when no ``SQLALCHEMY_*``
        database key is set, so the ``PARTITION_*`` keys apply.
    :raises ValueError: When keys of both families are set.
    :raises RuntimeError: When ``SQLALCHEMY_*`` keys are set but name no
        database.

    .. versionadded:: 0.1.0
    """
    _warn_unsupported(config)
    # Flask-SQLAlchemy's own defaults (False, {}) count as unset: config
    # classes often keep them beside the new keys.
    legacy = [key for key in SQLALCHEMY_KEYS if config.get(key)]
    if not legacy:
        return None
    _refuse_both_families(config, legacy)
    echo = config.get("SQLALCHEMY_ECHO")
    binds = _sqlalchemy_binds(config.get("SQLALCHEMY_BINDS"))
    uri = config.get("SQLALCHEMY_DATABASE_URI")
    if uri is not None:
        # As in Flask-SQLAlchemy, the URI and the global options win over a
        # None key of SQLALCHEMY_BINDS.
        options = binds[None][2] if None in binds else {}
        options.update(
            engine_options(
                config.get("SQLALCHEMY_ENGINE_OPTIONS"), "SQLALCHEMY_ENGINE_OPTIONS"
            )
        )
        binds[None] = ("SQLALCHEMY_DATABASE_URI", uri, options)
    if not binds:
        raise RuntimeError(
            "No database is configured: 'SQLALCHEMY_DATABASE_URI' is not set and"
            " 'SQLALCHEMY_BINDS' names no database. Set 'SQLALCHEMY_DATABASE_URI'"
            " to the URI of the default database, for example 'sqlite:///app.db'."
        )
    return _clusters(binds, echo, instance_path)


def _refuse_both_families(config: t.Mapping[str, t.Any], legacy: list[str]) -> None:
    ours = [key for key in PARTITION_KEYS if config.get(key) is not None]
    if ours:
        raise ValueError(
            f"Both Flask-Partition's keys ({_quoted(ours)}) and Flask-SQLAlchemy's"
            f" keys ({_quoted(legacy)}) are set. Configure the databases with one"
            " family of keys: the 'PARTITION_*' keys, or the 'SQLALCHEMY_*' keys,"
            " which are read only when no 'PARTITION_*' database key is set."
        )


def _clusters(
    binds: dict[str | None, tuple[str, object, dict[str, t.Any]]],
    echo: object,
    instance_path: str | None,
) -> dict[str | None, ClusterConfig]:
    clusters: dict[str | None, ClusterConfig] = {}
    # The default cluster first, then the binds in their order.
    for name in sorted(binds, key=lambda name: name is not None):
        key, value, options = binds[name]
        url = _mysql_defaults(parse_url(value, key, instance_path), options)
        if echo is not None:
            options.setdefault("echo", echo)
            options.setdefault("echo_pool", echo)
        clusters[name] = make_cluster(name, url, (), options, key)
    return clusters


def _warn_unsupported(config: t.Mapping[str, t.Any]) -> None:
    for key, lost in _UNSUPPORTED_KEYS.items():
        if config.get(key):
            warnings.warn(
                f"'{key}' is set, but Flask-Partition does not support it: {lost}."
                f" Remove '{key}' from the config.",
                UserWarning,
                stacklevel=_caller_stacklevel(),
            )


def _caller_stacklevel() -> int:
    """Return the ``stacklevel`` for :func:`warnings.warn`, called by the
    function calling this one, that names the first caller outside this
    package.

    The application's call sits at different depths: ``PartitionDB(app)``
    goes through ``__init__`` and ``init_app``, ``db.init_app(app)`` does
    not, and tests call :func:`parse_config` directly; a fixed level would
    point into the package for some of them. (``skip_file_prefixes`` does
    this from Python 3.12 on; 3.10 and 3.11 lack it.)
    """
    package = __name__.partition(".")[0]
    level = 1
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    while frame.f_back is not None:
        module = frame.f_globals.get("__name__", "")
        if module != package and not module.startswith(f"{package}."):
            break
        frame = frame.f_back
        level += 1
    return level


def _quoted(keys: t.Sequence[str]) -> str:
    return ", ".join(f"'{key}'" for key in keys)


def _sqlalchemy_binds(
    value: object,
) -> dict[str | None, tuple[str, object, dict[str, t.Any]]]:
    """Return each bind's config key, URI and engine options."""
    if value is None:
        return {}
    if not isinstance(value, t.Mapping):
        raise TypeError(
            "'SQLALCHEMY_BINDS' must be a dict of bind names to database URIs or"
            f" dicts with a 'url' key, got {mask_uri(value)!r}."
        )
    binds: dict[str | None, tuple[str, object, dict[str, t.Any]]] = {}
    for name, item in value.items():
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(
                f"'SQLALCHEMY_BINDS' keys must be non-empty strings, got {name!r}."
            )
        key = f"SQLALCHEMY_BINDS[{name!r}]"
        if isinstance(item, (str, sa.URL)):
            binds[name] = (key, item, {})
        elif isinstance(item, t.Mapping):
            if item.get("url") is None:
                raise ValueError(
                    f"{key} has no 'url'. A dict value is the engine options"
                    " with the database URI under 'url'."
                )
            options = {k: v for k, v in item.items() if k != "url"}
            binds[name] = (f"{key}['url']", item["url"], options)
        else:
            raise TypeError(
                f"{key} must be a database URI or a dict with a 'url' key, got"
                f" {mask_uri(item)!r}."
            )
    return binds


def _mysql_defaults(url: sa.URL, options: dict[str, t.Any]) -> sa.URL:
    """Apply Flask-SQLAlchemy's MySQL defaults: 4-byte UTF-8 and connections
    recycled before MySQL's 8-hour timeout closes them.
    """
    if not url.drivername.startswith("mysql"):
        return url
    if options.get("poolclass", sa.pool.QueuePool) is sa.pool.QueuePool:
        options.setdefault("pool_recycle", 7200)
    if "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url
