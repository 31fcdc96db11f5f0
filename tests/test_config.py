"""Bad configuration fails in init_app with a message naming the key and
never showing a password.
"""

from __future__ import annotations

import ast
import pathlib
import re
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_partition import compat
from flask_partition import config
from flask_partition import PartitionDB
from flask_partition import UnknownClusterError
from flask_partition.config import mask_uri
from flask_partition.config import parse_config
from partition_models import db

BASE = {"PARTITION_DATABASE_URI": "sqlite://"}


def _error(exc: type[Exception], **config: t.Any) -> str:
    with pytest.raises(exc) as info:
        parse_config(config)
    return str(info.value)


def test_missing_uri() -> None:
    assert _error(RuntimeError) == (
        "'PARTITION_DATABASE_URI' is not set. Set it to the URI of the default"
        " cluster's primary database, for example 'sqlite:///app.db'."
    )


def test_replicas_not_a_list() -> None:
    message = _error(
        TypeError, **BASE, PARTITION_REPLICAS="postgresql://app:s3cret@r1/app"
    )
    assert message == (
        "'PARTITION_REPLICAS' must be a list of database URIs, got"
        " 'postgresql://app:***@r1/app'."
    )


def test_malformed_uri_masks_the_password() -> None:
    message = _error(
        ValueError, PARTITION_DATABASE_URI="postgresql//app:s3cret@db1/app"
    )
    assert "s3cret" not in message
    assert message == (
        "'PARTITION_DATABASE_URI' is not a valid database URI:"
        " 'postgresql//app:***@db1/app'. Expected"
        " 'dialect+driver://user:password@host/database'."
    )
    message = _error(
        ValueError,
        **BASE,
        PARTITION_BINDS={"auth": {"primary": "x", "replicas": ["::pw:s3cret@"]}},
    )
    assert message.startswith("PARTITION_BINDS['auth']['primary'] is not a valid")


def test_bad_bind_values() -> None:
    assert _error(TypeError, **BASE, PARTITION_BINDS=["sqlite://"]) == (
        "'PARTITION_BINDS' must be a dict of bind names to database URIs or"
        " cluster dicts, got \"['sqlite://']\"."
    )
    assert _error(ValueError, **BASE, PARTITION_BINDS={"a": {"replicas": []}}) == (
        "PARTITION_BINDS['a'] has no 'primary' URI; every cluster needs one."
    )
    assert _error(
        ValueError, **BASE, PARTITION_BINDS={"a": {"primary": "sqlite://", "rep": 1}}
    ) == (
        "PARTITION_BINDS['a'] has unknown keys 'rep'; the allowed keys are"
        " 'primary', 'replicas' and 'engine_options'."
    )
    assert _error(TypeError, **BASE, PARTITION_BINDS={"a": 42}) == (
        "PARTITION_BINDS['a'] must be a database URI or a dict with 'primary',"
        " 'replicas' and 'engine_options', got '42'."
    )
    assert _error(TypeError, **BASE, PARTITION_BINDS={"": "sqlite://"}) == (
        "'PARTITION_BINDS' keys must be non-empty strings, got ''."
    )


def test_bind_keys_are_named_as_written_in_python() -> None:
    binds = {"a": {"primary": "sqlite://", "replicas": "sqlite://"}}
    assert _error(TypeError, **BASE, PARTITION_BINDS=binds) == (
        "PARTITION_BINDS['a']['replicas'] must be a list of database URIs,"
        " got 'sqlite://'."
    )


def test_bad_policy_and_engine_options() -> None:
    assert _error(ValueError, **BASE, PARTITION_REPLICA_POLICY="fastest") == (
        "'PARTITION_REPLICA_POLICY' must be one of 'round_robin', 'random', got"
        " 'fastest'."
    )
    assert _error(TypeError, **BASE, PARTITION_ENGINE_OPTIONS=["echo"]) == (
        "'PARTITION_ENGINE_OPTIONS' must be a dict of 'create_engine' arguments,"
        " got ['echo']."
    )
    assert _error(TypeError, PARTITION_DATABASE_URI=5) == (
        "'PARTITION_DATABASE_URI' must be a database URI string, got int '5'."
    )


def test_replicas_of_an_in_memory_sqlite_primary() -> None:
    assert _error(ValueError, **BASE, PARTITION_REPLICAS=["sqlite://"]) == (
        "'PARTITION_REPLICAS' is set but the primary is an in-memory SQLite"
        " database, which no other connection can read. Use a SQLite file"
        " ('sqlite:///app.db') or remove the replicas."
    )


def test_engine_options_merge_and_frozen_topology() -> None:
    topology = parse_config(
        {
            **BASE,
            "PARTITION_ENGINE_OPTIONS": {"echo": True, "pool_pre_ping": True},
            "PARTITION_BINDS": {
                "a": {"primary": "sqlite://", "engine_options": {"echo": False}}
            },
        }
    )
    assert dict(topology.clusters["a"].engine_options) == {
        "echo": False,
        "pool_pre_ping": True,
    }
    assert dict(topology.clusters[None].engine_options)["echo"] is True
    with pytest.raises(TypeError):
        topology.clusters["b"] = topology.clusters["a"]  # type: ignore[index]


def test_sqlite_paths_resolve_in_instance_folder_and_replicas_are_read_only() -> None:
    topology = parse_config(
        {
            "PARTITION_DATABASE_URI": "sqlite:///app.db",
            "PARTITION_REPLICAS": ["sqlite:///app.db?mode=ro"],
        },
        instance_path="/srv/instance",
    )
    cluster = topology.clusters[None]
    assert cluster.primary.database == "/srv/instance/app.db"
    (replica,) = cluster.replicas
    assert replica.database == "file:/srv/instance/app.db"
    assert dict(replica.query) == {"mode": "ro", "uri": "true"}


def test_mask_uri() -> None:
    url = sa.make_url("postgresql+psycopg://app:pw@db/app")
    assert mask_uri(url) == "postgresql+psycopg://app:***@db/app"
    assert mask_uri("mysql://root:p@ss@host/x") == "mysql://root:***@host/x"
    assert mask_uri("sqlite:///a.db") == "sqlite:///a.db"


def test_init_app_errors_name_the_key(tmp_path: t.Any) -> None:
    app = Flask("bad", instance_path=str(tmp_path))
    app.config["PARTITION_DATABASE_URI"] = "sqlite://"
    app.config["PARTITION_REPLICAS"] = "sqlite://"
    with pytest.raises(TypeError, match=re.escape("'PARTITION_REPLICAS' must be")):
        PartitionDB(app)
    assert "partition" not in app.extensions  # nothing half-registered


def test_sqlite_replica_must_name_an_existing_file(tmp_path: t.Any) -> None:
    app = Flask("typo", instance_path=str(tmp_path))
    app.config["PARTITION_DATABASE_URI"] = "sqlite:///app.db"
    app.config["PARTITION_REPLICAS"] = ["sqlite:///ap.db"]
    with pytest.raises(ValueError) as info:
        db.init_app(app)
    assert str(info.value) == (
        f"'PARTITION_REPLICAS[0]' names the SQLite file '{tmp_path}/ap.db', which"
        " does not exist. A SQLite replica opens the primary's file read-only;"
        " use the primary's path."
    )
    assert not (tmp_path / "ap.db").exists()
    assert "partition" not in app.extensions


def test_unknown_bind_key_in_a_model(tmp_path: t.Any) -> None:
    app = Flask("typo", instance_path=str(tmp_path))
    app.config["PARTITION_DATABASE_URI"] = "sqlite:///app.db"
    app.config["PARTITION_BINDS"] = {"analytcs": "sqlite:///a.db"}
    db.init_app(app)
    with app.app_context():
        from partition_models import Event

        with pytest.raises(UnknownClusterError) as info:
            db.session.get(Event, 1)
        assert str(info.value) == (
            "Bind key 'analytics' (model 'Event') is not configured. Configured"
            " binds: 'analytcs'. Add it to 'PARTITION_BINDS' or fix the key."
        )
        with pytest.raises(
            UnknownClusterError, match="Bind key 'analytics' .tables 'event'."
        ):
            db.create_all()
        with pytest.raises(UnknownClusterError, match="Bind key 'nope'"):
            db.create_all(bind="nope")


def test_config_module_is_pure() -> None:
    """The config package imports neither Flask nor the rest of the package,
    not even inside a function; it reads the ``SQLALCHEMY_*`` keys itself.
    Its modules import each other only.
    """
    folder = pathlib.Path(config.__file__).parent
    imported: set[str] = set()
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or ""))
    siblings = {f".{path.stem}" for path in folder.glob("*.py")}
    allowed = {"__future__", "dataclasses", "os", "re", "sys", "types", "typing"}
    assert imported <= allowed | siblings | {"warnings", "sqlalchemy"}
    assert {".legacy", ".settings", ".urls"} <= imported
    # The names of compat's API reference stay importable from compat.
    assert compat.read_sqlalchemy_config is config.read_sqlalchemy_config
    assert compat.SQLALCHEMY_KEYS is config.SQLALCHEMY_KEYS
    assert compat.PARTITION_KEYS is config.PARTITION_KEYS
