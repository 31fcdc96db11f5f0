"""Turn the ``PARTITION_*`` configuration, or Flask-SQLAlchemy's
``SQLALCHEMY_*`` database keys, into a frozen topology.

This module is pure: it reads a mapping and returns values, warns or raises.
It knows nothing of Flask, so it can be tested and reused on its own.
"""

from __future__ import annotations

import re
import types
import typing as t

import sqlalchemy as sa

from .legacy import PARTITION_KEYS as PARTITION_KEYS
from .legacy import read_sqlalchemy_config as read_sqlalchemy_config
from .legacy import SQLALCHEMY_KEYS as SQLALCHEMY_KEYS
from .settings import ClusterConfig as ClusterConfig
from .settings import ConsistencySettings as ConsistencySettings
from .settings import make_cluster
from .settings import ReplicaSettings as ReplicaSettings
from .settings import Topology as Topology
from .urls import engine_options
from .urls import mask_uri as mask_uri
from .urls import parse_url
from .urls import replica_urls
from .urls import sqlite_file as sqlite_file

#: Replica choice policies accepted by ``PARTITION_REPLICA_POLICY``.
REPLICA_POLICIES = ("round_robin", "random")
#: Modes accepted by ``PARTITION_COMMIT_MODE``.
COMMIT_MODES = ("best_effort", "single", "two_phase")
#: Modes accepted by ``PARTITION_CONSISTENCY``.
CONSISTENCY_MODES = ("auto", "lsn", "time", "off")
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

_CLUSTER_KEYS = ("primary", "replicas", "engine_options")


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
    global_options = engine_options(
        config.get("PARTITION_ENGINE_OPTIONS"), "PARTITION_ENGINE_OPTIONS"
    )
    clusters: dict[str | None, ClusterConfig] = {
        None: make_cluster(
            None,
            parse_url(
                config["PARTITION_DATABASE_URI"],
                "PARTITION_DATABASE_URI",
                instance_path,
            ),
            replica_urls(
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
    options.update(
        engine_options(value.get("engine_options"), f"{key}['engine_options']")
    )
    return make_cluster(
        name,
        parse_url(value["primary"], f"{key}['primary']", instance_path),
        replica_urls(value.get("replicas"), f"{key}['replicas']", instance_path),
        options,
        f"{key}['replicas']",
    )


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
