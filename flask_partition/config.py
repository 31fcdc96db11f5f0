"""Turn the ``PARTITION_*`` configuration, or Flask-SQLAlchemy's
``SQLALCHEMY_*`` database keys, into a frozen topology.

This module is pure: it reads a mapping and returns values, warns or raises.
It knows nothing of Flask, so it can be tested and reused on its own.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing as t
import warnings

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

#: Replica choice policies accepted by ``PARTITION_REPLICA_POLICY``.
REPLICA_POLICIES = ("round_robin", "random")
#: Modes accepted by ``PARTITION_COMMIT_MODE``.
COMMIT_MODES = ("best_effort", "single", "two_phase")
#: Modes accepted by ``PARTITION_CONSISTENCY``.
CONSISTENCY_MODES = ("auto", "lsn", "time", "off")
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

_CLUSTER_KEYS = ("primary", "replicas", "engine_options")
_PASSWORD_IN_URI = re.compile(r"(?P<head>://[^:/@\s]*:)[^\s/]*@")
# Malformed URIs ("postgresql//user:pw@host") still carry "user:password@".
_PASSWORD_LOOSE = re.compile(r"(?P<head>[^:/@\s]+:)(?!\*\*\*@)[^:/@\s]+@")

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


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """One primary database and its read replicas.

    :param name: The bind name, ``None`` for the default cluster.
    :param primary: The URL of the primary.
    :param replicas: The URLs of the read replicas, possibly empty.
    :param engine_options: Keyword arguments for :func:`sqlalchemy.create_engine`,
        the global options merged with this cluster's own.
    :param replicas_key: The config key of the replica list, for messages.
    :param is_shard: The cluster is a shard (``PARTITION_SHARDS``).

    .. versionadded:: 0.1.0
    """

    name: str | None
    primary: sa.URL
    replicas: tuple[sa.URL, ...]
    engine_options: t.Mapping[str, t.Any]
    replicas_key: str = "'PARTITION_REPLICAS'"
    is_shard: bool = False


@dataclasses.dataclass(frozen=True)
class ReplicaSettings:
    """How replicas are watched: health, replay positions and lag.

    :param cooldown: Seconds a replica that failed to connect, or whose
        connection broke, is skipped (``PARTITION_REPLICA_COOLDOWN``).
    :param check_interval: Seconds a replica's replay position and lag are
        trusted before they are read again (``PARTITION_REPLICA_CHECK_INTERVAL``).
    :param max_lag: Replicas further behind than this many seconds get no
        reads (``PARTITION_REPLICA_MAX_LAG``); ``None``: no limit.
    :param max_lag_bytes: The same limit in bytes of WAL
        (``PARTITION_REPLICA_MAX_LAG_BYTES``); ``None``: no limit.

    .. versionadded:: 0.1.0
    """

    cooldown: float = 5.0
    check_interval: float = 0.5
    max_lag: float | None = None
    max_lag_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class ConsistencySettings:
    """Read-your-writes across requests: how tokens are made and carried.

    :param mode: ``"auto"``, ``"lsn"``, ``"time"`` or ``"off"``
        (``PARTITION_CONSISTENCY``).
    :param window: Seconds after a commit during which a time token sends
        reads to the primary (``PARTITION_CONSISTENCY_WINDOW``).
    :param cookie: The token cookie's name, ``None`` for the header only
        (``PARTITION_TOKEN_COOKIE``).
    :param max_age: Seconds a token is honoured (``PARTITION_TOKEN_MAX_AGE``).
    :param secret_keys: The keys tokens are signed with, newest last
        (``PARTITION_TOKEN_SECRET``, else ``SECRET_KEY`` and
        ``SECRET_KEY_FALLBACKS``). Never shown in a repr.

    .. versionadded:: 0.1.0
    """

    mode: str = "auto"
    window: float = 2.0
    cookie: str | None = "partition"
    max_age: float = 300.0
    secret_keys: tuple[str | bytes, ...] = dataclasses.field(default=(), repr=False)


@dataclasses.dataclass(frozen=True)
class Topology:
    """Every cluster an application uses, keyed by bind name (``None`` is the
    default cluster; it is missing only when Flask-SQLAlchemy's
    ``SQLALCHEMY_BINDS`` are configured without ``SQLALCHEMY_DATABASE_URI``).

    .. versionadded:: 0.1.0
    """

    clusters: t.Mapping[str | None, ClusterConfig]
    replica_policy: str
    #: The shard clusters by shard name, in configured order (may be empty).
    shards: t.Mapping[str, ClusterConfig] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    #: Threads that run a scattered read on the shards at the same time.
    scatter_workers: int = 8
    #: Replica health, replay positions and lag limits.
    replica_settings: ReplicaSettings = ReplicaSettings()
    #: Read-your-writes tokens.
    consistency: ConsistencySettings = ConsistencySettings()
    #: Add the ``X-Partition-Route`` header to responses
    #: (``PARTITION_DEBUG_HEADER``).
    debug_header: bool = False
    #: How a session that wrote to several clusters commits
    #: (``PARTITION_COMMIT_MODE``).
    commit_mode: str = "best_effort"


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


def parse_config(
    config: t.Mapping[str, t.Any], *, instance_path: str | None = None
) -> Topology:
    """Read the ``PARTITION_*`` keys of ``config`` and validate them.

    When none of the ``PARTITION_*`` database keys is set, Flask-SQLAlchemy's
    ``SQLALCHEMY_DATABASE_URI``, ``SQLALCHEMY_BINDS``,
    ``SQLALCHEMY_ENGINE_OPTIONS`` and ``SQLALCHEMY_ECHO`` are read instead
    (see :doc:`/migrating`); setting keys of both families is an error.

    :param config: A Flask ``app.config`` or any mapping of the same keys.
    :param instance_path: The folder relative SQLite paths are resolved in.
        ``None`` leaves them relative to the working directory.
    :raises RuntimeError: When ``PARTITION_DATABASE_URI`` is not set.
    :raises TypeError: When a value has the wrong type; the key is named.
    :raises ValueError: When a value is malformed, or both families of keys
        are set; the keys are named and any password is masked.

    .. versionchanged:: 0.1.0
        Falls back to the ``SQLALCHEMY_*`` keys.
    """
    shards: dict[str, ClusterConfig] = {}
    clusters = read_sqlalchemy_config(config, instance_path)
    if clusters is None:
        clusters, shards = _partition_clusters(config, instance_path)
    policy = config.get("PARTITION_REPLICA_POLICY", "round_robin")
    if policy not in REPLICA_POLICIES:
        choices = ", ".join(repr(p) for p in REPLICA_POLICIES)
        raise ValueError(
            f"'PARTITION_REPLICA_POLICY' must be one of {choices}, got {policy!r}."
        )
    workers = config.get("PARTITION_SCATTER_WORKERS", max(8, 2 * len(shards)))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(
            f"'PARTITION_SCATTER_WORKERS' must be a positive integer, got {workers!r}."
        )
    debug_header = config.get("PARTITION_DEBUG_HEADER", False)
    if not isinstance(debug_header, bool):
        raise TypeError(
            f"'PARTITION_DEBUG_HEADER' must be True or False, got {debug_header!r}."
        )
    return Topology(
        clusters=types.MappingProxyType(clusters),
        replica_policy=policy,
        shards=types.MappingProxyType(shards),
        scatter_workers=workers,
        replica_settings=_replica_settings(config),
        consistency=_consistency(config),
        debug_header=debug_header,
        commit_mode=check_commit_mode(
            config.get("PARTITION_COMMIT_MODE", "best_effort"),
            "'PARTITION_COMMIT_MODE'",
        ),
    )


def check_commit_mode(mode: object, where: str) -> str:
    """Return ``mode`` if it is a commit mode, else raise naming ``where``.

    :raises ValueError: For anything but ``"best_effort"``, ``"single"`` or
        ``"two_phase"``.
    """
    if mode not in COMMIT_MODES:
        choices = ", ".join(repr(m) for m in COMMIT_MODES)
        raise ValueError(f"{where} must be one of {choices}, got {mode!r}.")
    return mode


def _partition_clusters(
    config: t.Mapping[str, t.Any], instance_path: str | None
) -> tuple[dict[str | None, ClusterConfig], dict[str, ClusterConfig]]:
    """Read the clusters and shards of the ``PARTITION_*`` keys."""
    if config.get("PARTITION_DATABASE_URI") is None:
        raise RuntimeError(
            "'PARTITION_DATABASE_URI' is not set. Set it to the URI of the default"
            " cluster's primary database, for example 'sqlite:///app.db'."
        )
    global_options = _options(
        config.get("PARTITION_ENGINE_OPTIONS"), "PARTITION_ENGINE_OPTIONS"
    )
    clusters: dict[str | None, ClusterConfig] = {
        None: _cluster(
            None,
            _url(
                config["PARTITION_DATABASE_URI"],
                "PARTITION_DATABASE_URI",
                instance_path,
            ),
            _replicas(
                config.get("PARTITION_REPLICAS"), "PARTITION_REPLICAS", instance_path
            ),
            global_options,
            "'PARTITION_REPLICAS'",
        )
    }
    clusters.update(
        _family(config, "PARTITION_BINDS", "bind", global_options, instance_path)
    )
    shards = _family(config, "PARTITION_SHARDS", "shard", global_options, instance_path)
    for name in shards:
        if name in clusters:
            raise ValueError(
                f"'PARTITION_SHARDS' and 'PARTITION_BINDS' both define {name!r}."
                " Bind and shard names share one namespace of clusters; rename"
                " one of them."
            )
    return clusters, shards


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
    for key, lost in _UNSUPPORTED_KEYS.items():
        if config.get(key):
            warnings.warn(
                f"'{key}' is set, but Flask-Partition does not support it: {lost}."
                f" Remove '{key}' from the config.",
                UserWarning,
                stacklevel=_caller_stacklevel(),
            )
    # Flask-SQLAlchemy's own defaults (False, {}) count as unset: config
    # classes often keep them beside the new keys.
    legacy = [key for key in SQLALCHEMY_KEYS if config.get(key)]
    if not legacy:
        return None
    ours = [key for key in PARTITION_KEYS if config.get(key) is not None]
    if ours:
        raise ValueError(
            f"Both Flask-Partition's keys ({_quoted(ours)}) and Flask-SQLAlchemy's"
            f" keys ({_quoted(legacy)}) are set. Configure the databases with one"
            " family of keys: the 'PARTITION_*' keys, or the 'SQLALCHEMY_*' keys,"
            " which are read only when no 'PARTITION_*' database key is set."
        )
    echo = config.get("SQLALCHEMY_ECHO")
    binds = _sqlalchemy_binds(config.get("SQLALCHEMY_BINDS"))
    uri = config.get("SQLALCHEMY_DATABASE_URI")
    if uri is not None:
        # As in Flask-SQLAlchemy, the URI and the global options win over a
        # None key of SQLALCHEMY_BINDS.
        options = binds[None][2] if None in binds else {}
        options.update(
            _options(
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
    clusters: dict[str | None, ClusterConfig] = {}
    # The default cluster first, then the binds in their order.
    for name in sorted(binds, key=lambda name: name is not None):
        key, value, options = binds[name]
        url = _mysql_defaults(_url(value, key, instance_path), options)
        if echo is not None:
            options.setdefault("echo", echo)
            options.setdefault("echo_pool", echo)
        clusters[name] = _cluster(name, url, (), options, key)
    return clusters


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
    package = __name__.rpartition(".")[0]
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


def _seconds(
    config: t.Mapping[str, t.Any], key: str, default: float | None
) -> float | None:
    value = config.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'{key}' must be a number of seconds, got {value!r}.")
    if not value >= 0 or value == float("inf"):
        raise ValueError(
            f"'{key}' must be a finite number of seconds >= 0, got {value!r}."
        )
    return float(value)


def _secret(value: object, key: str) -> str | bytes:
    if not isinstance(value, (str, bytes)):
        raise TypeError(
            f"'{key}' must be a string or bytes to sign consistency tokens, got a"
            f" {type(value).__name__}."
        )
    if not value:
        raise ValueError(f"'{key}' is empty; consistency tokens need a secret.")
    return value


def _replica_settings(config: t.Mapping[str, t.Any]) -> ReplicaSettings:
    max_bytes = config.get("PARTITION_REPLICA_MAX_LAG_BYTES")
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
    ):
        raise TypeError(
            "'PARTITION_REPLICA_MAX_LAG_BYTES' must be a number of bytes,"
            f" got {max_bytes!r}."
        )
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(
            "'PARTITION_REPLICA_MAX_LAG_BYTES' must be a number of bytes >= 0,"
            f" got {max_bytes!r}."
        )
    return ReplicaSettings(
        cooldown=t.cast(float, _seconds(config, "PARTITION_REPLICA_COOLDOWN", 5.0)),
        check_interval=t.cast(
            float, _seconds(config, "PARTITION_REPLICA_CHECK_INTERVAL", 0.5)
        ),
        max_lag=_seconds(config, "PARTITION_REPLICA_MAX_LAG", None),
        max_lag_bytes=max_bytes,
    )


def _consistency(config: t.Mapping[str, t.Any]) -> ConsistencySettings:
    mode = config.get("PARTITION_CONSISTENCY", "auto")
    if mode not in CONSISTENCY_MODES:
        choices = ", ".join(repr(m) for m in CONSISTENCY_MODES)
        raise ValueError(
            f"'PARTITION_CONSISTENCY' must be one of {choices}, got {mode!r}."
        )
    window = t.cast(float, _seconds(config, "PARTITION_CONSISTENCY_WINDOW", 2.0))
    max_age = t.cast(float, _seconds(config, "PARTITION_TOKEN_MAX_AGE", 300.0))
    if max_age < 1:
        # The cookie's Max-Age is whole seconds: below 1 it is deleted at once.
        raise ValueError(
            f"'PARTITION_TOKEN_MAX_AGE' must be at least 1 second, got {max_age!r}."
        )
    cookie = config.get("PARTITION_TOKEN_COOKIE", "partition")
    if cookie is not None and not isinstance(cookie, str):
        raise TypeError(
            f"'PARTITION_TOKEN_COOKIE' must be a cookie name or None, got {cookie!r}."
        )
    if cookie is not None and not _COOKIE_NAME.match(cookie):
        raise ValueError(
            "'PARTITION_TOKEN_COOKIE' must be a cookie name (letters, digits and"
            f" !#$%&'*+.^_`|~-) or None for the header only, got {cookie!r}."
        )
    keys: list[t.Any] = []
    secret = config.get("PARTITION_TOKEN_SECRET")
    if mode == "off":
        pass  # no tokens: the keys are Flask's business
    elif secret is not None:
        keys = [_secret(secret, "PARTITION_TOKEN_SECRET")]
    else:
        fallbacks = config.get("SECRET_KEY_FALLBACKS") or []
        if not isinstance(fallbacks, (list, tuple)):
            # A lone string would be split into one-letter keys.
            raise TypeError(
                "'SECRET_KEY_FALLBACKS' must be a list of old secret keys, got a"
                f" {type(fallbacks).__name__}."
            )
        keys = [_secret(k, "SECRET_KEY_FALLBACKS") for k in fallbacks]
        if config.get("SECRET_KEY") is not None:
            keys.append(_secret(config["SECRET_KEY"], "SECRET_KEY"))
    return ConsistencySettings(
        mode=mode,
        window=window,
        cookie=cookie,
        max_age=max_age,
        secret_keys=tuple(keys),
    )


def _family(
    config: t.Mapping[str, t.Any],
    family: str,
    noun: str,
    global_options: dict[str, t.Any],
    instance_path: str | None,
) -> dict[str, ClusterConfig]:
    """Read ``PARTITION_BINDS`` or ``PARTITION_SHARDS``: names to clusters."""
    value = config.get(family)
    if value is None:
        return {}
    if not isinstance(value, t.Mapping):
        raise TypeError(
            f"'{family}' must be a dict of {noun} names to database URIs or"
            f" cluster dicts, got {mask_uri(value)!r}."
        )
    clusters: dict[str, ClusterConfig] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"'{family}' keys must be non-empty strings, got {name!r}.")
        clusters[name] = _bind(name, item, global_options, instance_path, family)
    return clusters


def _bind(
    name: str,
    value: object,
    global_options: dict[str, t.Any],
    instance_path: str | None,
    family: str,
) -> ClusterConfig:
    key = f"{family}[{name!r}]"
    if isinstance(value, (str, sa.URL)):
        value = {"primary": value}
    if not isinstance(value, t.Mapping):
        raise TypeError(
            f"{key} must be a database URI or a dict with 'primary', 'replicas'"
            f" and 'engine_options', got {mask_uri(value)!r}."
        )
    unknown = sorted(set(value) - set(_CLUSTER_KEYS), key=str)
    if unknown:
        raise ValueError(
            f"{key} has unknown keys {', '.join(repr(k) for k in unknown)}; the"
            " allowed keys are 'primary', 'replicas' and 'engine_options'."
        )
    if value.get("primary") is None:
        raise ValueError(f"{key} has no 'primary' URI; every cluster needs one.")
    options = dict(global_options)
    options.update(_options(value.get("engine_options"), f"{key}['engine_options']"))
    return _cluster(
        name,
        _url(value["primary"], f"{key}['primary']", instance_path),
        _replicas(value.get("replicas"), f"{key}['replicas']", instance_path),
        options,
        f"{key}['replicas']",
    )


def _cluster(
    name: str | None,
    primary: sa.URL,
    replicas: tuple[sa.URL, ...],
    options: dict[str, t.Any],
    replicas_key: str,
) -> ClusterConfig:
    if replicas and primary.get_backend_name() == "sqlite" and _in_memory(primary):
        raise ValueError(
            f"{replicas_key} is set but the primary is an in-memory SQLite"
            " database, which no other connection can read. Use a SQLite file"
            " ('sqlite:///app.db') or remove the replicas."
        )
    return ClusterConfig(
        name=name,
        primary=primary,
        replicas=replicas,
        engine_options=types.MappingProxyType(options),
        replicas_key=replicas_key,
        is_shard=replicas_key.startswith("PARTITION_SHARDS["),
    )


def _in_memory(url: sa.URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


def sqlite_file(url: sa.URL) -> str | None:
    """Return the file path of a SQLite URL, ``None`` for an in-memory one.

    Strips the ``file:`` prefix of URI filenames (``uri=true``).

    :param url: A URL whose backend is SQLite.
    """
    if _in_memory(url):
        return None
    database = url.database or ""
    return database[len("file:") :] if database.startswith("file:") else database


def _quote(key: str) -> str:
    """Quote a key for messages: 'PARTITION_REPLICAS[0]', but bind and shard
    keys read PARTITION_BINDS['auth']['replicas'] as written in Python.
    """
    nested = ("PARTITION_BINDS[", "PARTITION_SHARDS[", "SQLALCHEMY_BINDS[")
    return key if key.startswith(nested) else f"'{key}'"


def _options(value: object, key: str) -> dict[str, t.Any]:
    if value is None:
        return {}
    if not isinstance(value, t.Mapping):
        raise TypeError(
            f"{_quote(key)} must be a dict of 'create_engine' arguments, got {value!r}."
        )
    return dict(value)


def _replicas(value: object, key: str, instance_path: str | None) -> tuple[sa.URL, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{_quote(key)} must be a list of database URIs, got {mask_uri(value)!r}."
        )
    return tuple(
        _url(item, f"{key}[{index}]", instance_path, replica=True)
        for index, item in enumerate(value)
    )


def _url(
    value: object, key: str, instance_path: str | None, *, replica: bool = False
) -> sa.URL:
    key = _quote(key)
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
