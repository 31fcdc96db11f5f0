"""``flask partition`` on SQLite: every command, its output and exit code."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import typing as t

import click
import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from click.testing import Result
from flask import Flask
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_partition import cli
from flask_partition import display
from flask_partition import HashShardMap
from flask_partition import health
from flask_partition import KeyIsShardName
from flask_partition import PartitionDB
from flask_partition import PartitionModel
from flask_partition.appstate import app_state
from flask_partition.appstate import AppState
from flask_partition.routing import Role
from partition_models import AppFactory
from partition_models import db
from shard_models import Order
from shard_models import sdb
from shard_models import ShardAppFactory


def run(app: Flask, *args: str, input: str | None = None) -> Result:
    return app.test_cli_runner().invoke(args=["partition", *args], input=input)


def dispose(app: Flask) -> None:
    """Close pooled connections, so the next statement opens the file again."""
    for engine in sdb.get_router(app).engines():
        engine.dispose()


def tables(path: t.Any) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        return {name for (name,) in rows}


def add_orders(app: Flask, *keys: int) -> dict[str, int]:
    """Store one order per key; return how many each shard got."""
    per_shard: dict[str, int] = {}
    with app.app_context():
        for key in keys:
            sdb.session.add(Order(customer_id=key, amount=key))
            shard = sdb.get_router().shard_map.shard_for(key)  # type: ignore[union-attr]
            per_shard[shard] = per_shard.get(shard, 0) + 1
        sdb.session.commit()
    return per_shard


def test_commands_are_registered(make_app: AppFactory) -> None:
    result = run(make_app(), "--help")
    assert result.exit_code == 0
    for command in ("status", "create-all", "drop-all", "shards", "dev-cluster"):
        assert command in result.output
    assert "Exit codes: 0 success, 1 a node unreachable" in result.output


def test_init_app_adds_a_group_over_partition_cli(make_app: AppFactory) -> None:
    """The group that ``init_app`` adds loads ``partition_cli`` by name and
    offers its commands under the same name and help.
    """
    app = make_app()
    group = app.cli.commands["partition"]
    assert isinstance(group, click.Group)
    assert group is not cli.partition_cli
    assert (group.name, group.help) == ("partition", cli.partition_cli.help)
    with click.Context(group) as ctx:
        assert group.list_commands(ctx) == sorted(cli.partition_cli.commands)
        for name, command in cli.partition_cli.commands.items():
            assert group.get_command(ctx, name) is command


def test_app_state_is_the_extension_state(make_app: AppFactory) -> None:
    app = make_app()
    state: AppState = db.get_state(app)
    assert app_state(app) is state
    with app.app_context():
        assert app_state() is state
    with pytest.raises(RuntimeError) as info:
        app_state(Flask("bare"))
    assert str(info.value) == (
        "The Flask app 'bare' has no 'PartitionDB'. Call 'db.init_app(app)' first."
    )


# -- status ---------------------------------------------------------------------


def test_status_lists_every_node(
    make_shard_app: ShardAppFactory, tmp_path: t.Any
) -> None:
    result = run(make_shard_app(), "status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "CLUSTER", "KIND", "NODE", "STATE", "LAG", "BYTES", "LAG", "SECONDS",
        "REVISION", "URL",
    ]  # fmt: skip
    rows = [line.split() for line in lines[1:-1]]
    # No migration applied on a primary: 'none'; replicas hold their primary's.
    assert [row[:7] for row in rows] == [
        ["default", "default", "primary", "ok", "-", "-", "none"],
        ["analytics", "bind", "primary", "ok", "-", "-", "none"],
        ["a", "shard", "primary", "ok", "-", "-", "none"],
        ["b", "shard", "primary", "ok", "-", "-", "none"],
        ["c", "shard", "primary", "ok", "-", "-", "none"],
        ["c", "shard", "replica[0]", "ok", "-", "-", "-"],
    ]
    assert rows[0][7] == f"sqlite:///{tmp_path}/app.db"
    assert rows[5][7] == f"sqlite:///file:{tmp_path}/c.db?mode=ro&uri=true"
    assert lines[-1] == "6 of 6 nodes reachable."
    assert result.stderr == ""


def test_status_json(make_app: AppFactory, tmp_path: t.Any) -> None:
    result = run(make_app(), "status", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["migrations"] is None
    assert [n["revisions"] for n in data["nodes"]] == [[], None, []]
    assert [(n["cluster"], n["role"], n["index"]) for n in data["nodes"]] == [
        (None, "primary", 0),
        (None, "replica", 0),
        ("analytics", "primary", 0),
    ]
    assert data["nodes"][1] == {
        "cluster": None,
        "kind": "default",
        "role": "replica",
        "index": 0,
        # The SQLite replica as it is opened: read-only.
        "url": f"sqlite:///file:{tmp_path}/app.db?mode=ro&uri=true",
        "reachable": True,
        "error": None,
        "lag_bytes": None,
        "lag_seconds": None,
        "notes": [],
        "revisions": None,
        "revision_error": None,
        "behind_primary_bytes": None,
    }


def test_status_unreachable_node_exits_1(
    make_shard_app: ShardAppFactory, tmp_path: t.Any
) -> None:
    # A primary whose "file" is a folder cannot be opened.
    app = make_shard_app(PARTITION_SHARDS={"a": "sqlite:///a.db"})
    os.remove(tmp_path / "a.db")
    (tmp_path / "a.db").mkdir()
    result = run(app, "status")
    assert result.exit_code == cli.EXIT_FAILED == 1
    rows = [line.split()[:4] for line in result.stdout.splitlines()[1:]]
    assert ["a", "shard", "primary", "UNREACHABLE"] in rows
    assert ["default", "default", "primary", "ok"] in rows
    assert result.stderr.splitlines() == [
        "shard 'a' primary: OperationalError: unable to open database file",
        "2 of 3 nodes reachable.",
    ]


def test_status_options_are_checked(make_app: AppFactory) -> None:
    result = run(make_app(), "status", "--timeout", "0")
    assert result.exit_code == cli.EXIT_USAGE == 2
    assert "Invalid value for '--timeout'" in result.output


def test_check_nodes_without_a_command(make_shard_app: ShardAppFactory) -> None:
    app = make_shard_app()
    nodes = health.check_nodes(app, timeout=1)
    assert [(n.cluster, n.kind, n.name) for n in nodes] == [
        (None, "default", "primary"),
        ("analytics", "bind", "primary"),
        ("a", "shard", "primary"),
        ("b", "shard", "primary"),
        ("c", "shard", "primary"),
        ("c", "shard", "replica[0]"),
    ]
    assert all(n.reachable and n.error is None for n in nodes)
    assert nodes[-1].role is Role.REPLICA
    with app.app_context():
        assert health.check_nodes() == nodes


# -- create-all and drop-all ------------------------------------------------------


def test_drop_all_and_create_all_every_cluster(
    make_shard_app: ShardAppFactory, tmp_path: t.Any
) -> None:
    app = make_shard_app()
    result = run(app, "drop-all", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"the default cluster (sqlite:///{tmp_path}/app.db): dropped 1 table: customer",
        f"bind 'analytics' (sqlite:///{tmp_path}/analytics.db): dropped 1 table:"
        " audit_event",
        f"shard 'a' (sqlite:///{tmp_path}/a.db): dropped 3 tables: order, payment,"
        " order_line",
        f"shard 'b' (sqlite:///{tmp_path}/b.db): dropped 3 tables: order, payment,"
        " order_line",
        f"shard 'c' (sqlite:///{tmp_path}/c.db): dropped 3 tables: order, payment,"
        " order_line",
    ]
    for name in ("app", "analytics", "a", "b", "c"):
        assert tables(tmp_path / f"{name}.db") == set()
    result = run(app, "create-all")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"the default cluster (sqlite:///{tmp_path}/app.db): created 1 table: customer"
    )
    assert result.stdout.splitlines()[4] == (
        f"shard 'c' (sqlite:///{tmp_path}/c.db): created 3 tables: order, payment,"
        " order_line"
    )
    assert tables(tmp_path / "b.db") == {"order", "order_line", "payment"}
    result = run(app, "create-all")
    assert result.stdout.splitlines()[1] == (
        f"bind 'analytics' (sqlite:///{tmp_path}/analytics.db): nothing to create"
        " (1 table exists)"
    )


def test_create_all_narrowed_by_options(
    make_shard_app: ShardAppFactory, tmp_path: t.Any
) -> None:
    app = make_shard_app()
    assert run(app, "drop-all", "--yes").exit_code == 0
    result = run(
        app, "create-all", "--shard", "b", "--bind", "analytics", "--shard", "b"
    )
    assert result.exit_code == 0
    assert [line.split(" (")[0] for line in result.stdout.splitlines()] == [
        "bind 'analytics'",
        "shard 'b'",
    ]
    assert tables(tmp_path / "analytics.db") == {"audit_event"}
    assert tables(tmp_path / "b.db") == {"order", "order_line", "payment"}
    assert tables(tmp_path / "app.db") == tables(tmp_path / "a.db") == set()
    result = run(app, "create-all", "--default")
    assert result.stdout.startswith("the default cluster")
    assert len(result.stdout.splitlines()) == 1
    assert tables(tmp_path / "app.db") == {"customer"}
    # Some tables there already: created and existing are counted apart.
    with contextlib.closing(sqlite3.connect(tmp_path / "a.db")) as connection:
        connection.execute('CREATE TABLE "order" (id INTEGER PRIMARY KEY)')
    result = run(app, "create-all", "--shard", "a")
    assert result.stdout.endswith("created 2 tables: payment, order_line; 1 existed\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--bind", "nope"],
            "Invalid value for '--bind': Bind 'nope' is not configured. Configured"
            " binds: 'analytics'.",
        ),
        (
            ["--shard", "analytics"],
            "Invalid value for '--shard': Shard 'analytics' is not configured."
            " Configured shards: 'a', 'b', 'c'.",
        ),
    ],
)
@pytest.mark.parametrize("command", ["create-all", "drop-all"])
def test_unknown_cluster_is_a_usage_error(
    make_shard_app: ShardAppFactory,
    tmp_path: t.Any,
    command: str,
    args: list[str],
    message: str,
) -> None:
    app = make_shard_app()
    confirm = ["--yes"] if command == "drop-all" else []
    result = run(app, command, "--shard", "a", *args, *confirm)
    assert result.exit_code == cli.EXIT_USAGE
    assert result.stderr.splitlines()[-1] == f"Error: {message}"
    assert result.stdout == ""
    assert tables(tmp_path / "a.db") == {"order", "order_line", "payment"}


def test_drop_all_asks_first(make_shard_app: ShardAppFactory, tmp_path: t.Any) -> None:
    app = make_shard_app()
    for answer in ("n\n", "\n", None):
        result = run(app, "drop-all", "--shard", "c", "--default", input=answer)
        assert result.exit_code == cli.EXIT_FAILED
        assert tables(tmp_path / "c.db") == {"order", "order_line", "payment"}
    assert result.stdout.splitlines()[:3] == [
        "This drops the tables of:",
        f"  the default cluster (sqlite:///{tmp_path}/app.db): customer",
        f"  shard 'c' (sqlite:///{tmp_path}/c.db): order, order_line, payment",
    ]
    result = run(app, "drop-all", "--shard", "c", "--default", input="y\n")
    assert result.exit_code == 0
    assert "Drop them? [y/N]: y" in result.stdout
    assert tables(tmp_path / "c.db") == tables(tmp_path / "app.db") == set()
    assert tables(tmp_path / "b.db") == {"order", "order_line", "payment"}


def test_a_failing_cluster_does_not_stop_the_others(
    make_shard_app: ShardAppFactory, tmp_path: t.Any
) -> None:
    app = make_shard_app()
    dispose(app)
    (tmp_path / "b.db").unlink()
    (tmp_path / "b.db").mkdir()
    result = run(app, "drop-all", "--yes")
    assert result.exit_code == cli.EXIT_FAILED
    assert result.stderr.splitlines() == [
        f"shard 'b' (sqlite:///{tmp_path}/b.db): failed: OperationalError: unable to"
        " open database file"
    ]
    assert len(result.stdout.splitlines()) == 4
    assert tables(tmp_path / "c.db") == set()


class ArchiveBase(PartitionModel, sa_orm.DeclarativeBase):
    pass


archive_db = PartitionDB(model_class=ArchiveBase)


class OldOrder(ArchiveBase):
    __bind_key__ = "archive"
    id: Mapped[int] = mapped_column(primary_key=True)


class Tick(ArchiveBase):
    __shard_key__ = "account"
    id: Mapped[int] = mapped_column(primary_key=True)
    account: Mapped[int]


def test_models_of_unconfigured_clusters_are_reported(tmp_path: t.Any) -> None:
    app = Flask("archive", instance_path=str(tmp_path))
    app.config["PARTITION_DATABASE_URI"] = "sqlite:///main.db"
    archive_db.init_app(app)
    try:
        result = run(app, "create-all")
        assert result.exit_code == cli.EXIT_FAILED
        assert result.stdout.splitlines() == [
            f"the default cluster (sqlite:///{tmp_path}/main.db): no tables"
        ]
        assert result.stderr.splitlines() == [
            "Error: bind 'archive' (tables 'old_order') is not configured; add it to"
            " 'PARTITION_BINDS'.",
            "Error: sharded tables ('tick') exist but 'PARTITION_SHARDS' is not set.",
        ]
        # Named explicitly, an unconfigured bind is a usage error.
        assert run(app, "create-all", "--bind", "archive").exit_code == cli.EXIT_USAGE
        assert run(app, "create-all", "--default").exit_code == 0
    finally:
        for engine in archive_db.get_router(app).engines():
            engine.dispose()


def test_flask_sqlalchemy_binds_only(tmp_path: t.Any) -> None:
    """With only ``SQLALCHEMY_BINDS`` there is no default cluster: the
    commands leave it out and report the models that need it.
    """
    app = Flask("binds_only", instance_path=str(tmp_path))
    app.config["SQLALCHEMY_BINDS"] = {"analytics": "sqlite:///analytics.db"}
    db.init_app(app)
    try:
        result = run(app, "create-all")
        assert result.exit_code == cli.EXIT_FAILED
        assert result.stdout.splitlines() == [
            f"bind 'analytics' (sqlite:///{tmp_path}/analytics.db): created 1"
            " table: event"
        ]
        assert result.stderr.splitlines() == [
            "Error: the default cluster (tables 'author', 'book') is not"
            " configured; add it to 'PARTITION_DATABASE_URI'."
        ]
        result = run(app, "create-all", "--default")
        assert result.exit_code == cli.EXIT_USAGE
        assert "The default cluster is not configured: only binds are." in (
            result.stderr
        )
        assert run(app, "drop-all", "--bind", "analytics", "--yes").exit_code == 0
        status = json.loads(run(app, "status", "--json").stdout)
        assert [(n["cluster"], n["role"]) for n in status["nodes"]] == [
            ("analytics", "primary")
        ]
    finally:
        for engine in db.get_router(app).engines():
            engine.dispose()


# -- shards -------------------------------------------------------------------------


def test_shards_without_shards(make_app: AppFactory) -> None:
    app = make_app()
    result = run(app, "shards")
    assert result.exit_code == 0
    assert result.output == "No shards: 'PARTITION_SHARDS' is not set.\n"
    result = run(app, "shards", "--key", "1")
    assert result.exit_code == cli.EXIT_USAGE
    assert (
        "Error: '--key' needs shards; 'PARTITION_SHARDS' is not set." in result.output
    )


def test_shards_buckets_and_rows(
    make_shard_app: ShardAppFactory, tmp_path: t.Any
) -> None:
    app = make_shard_app()
    per_shard = add_orders(app, *range(1, 31))
    result = run(app, "shards", "--key", "42", "--key", "ada")
    assert result.exit_code == 0, result.output
    owned = HashShardMap(["a", "b", "c"]).buckets_by_shard()
    lines = result.stdout.splitlines()
    assert lines[0] == "Shard map: HashShardMap over 1024 buckets."
    assert lines[2].split() == ["SHARD", "BUCKETS", "SHARE", "ROWS", "COUNTED", "ON"]
    for line, name in zip(lines[3:6], "abc", strict=True):
        share = f"{100 * len(owned[name]) / 1024:.1f}%"
        assert line.split()[:3] == [name, str(len(owned[name])), share]
    # Counted on c's replica, the others' primaries.
    assert lines[5].split()[3] == f"sqlite:///file:{tmp_path}/c.db?mode=ro&uri=true"
    assert lines[7].split() == ["TABLE", "a", "b", "c", "TOTAL"]
    assert lines[8].split() == [
        "order",
        *(str(per_shard.get(n, 0)) for n in "abc"),
        "30",
    ]
    assert lines[9].split() == ["payment", "0", "0", "0", "0"]
    shard_map = HashShardMap(["a", "b", "c"])
    assert lines[-2:] == [
        f"Key '42' -> shard {shard_map.shard_for(42)!r}"
        f" (bucket {shard_map.bucket_of(42)})",
        f"Key 'ada' -> shard {shard_map.shard_for('ada')!r}"
        f" (bucket {shard_map.bucket_of('ada')})",
    ]


def test_shards_json(make_shard_app: ShardAppFactory) -> None:
    app = make_shard_app()
    per_shard = add_orders(app, 1, 2, 3, 4, 5)
    result = run(app, "shards", "--json", "--key", "7")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["map"] == "HashShardMap" and data["buckets"] == 1024
    assert list(data["shards"]) == ["a", "b", "c"]
    for name, shard in data["shards"].items():
        assert shard["rows"] == {
            "order": per_shard.get(name, 0),
            "payment": 0,
            "order_line": 0,
        }
        assert shard["error"] is None
    assert sum(s["buckets"] for s in data["shards"].values()) == 1024
    shard_map = HashShardMap(["a", "b", "c"])
    assert data["keys"] == {
        "7": {"shard": shard_map.shard_for(7), "bucket": shard_map.bucket_of(7)}
    }


def test_shards_missing_table_and_unreadable_shard(
    make_shard_app: ShardAppFactory, tmp_path: t.Any
) -> None:
    app = make_shard_app()
    with app.app_context():
        sdb.drop_all(shard="a")
    os.remove(tmp_path / "c.db")  # c's read-only replica cannot open it
    result = run(app, "shards")
    assert result.exit_code == cli.EXIT_FAILED
    assert result.stdout.splitlines()[8].split() == ["order", "missing", "0", "?", "0"]
    assert result.stderr.splitlines() == [
        f"Shard 'c' (sqlite:///file:{tmp_path}/c.db?mode=ro&uri=true):"
        " OperationalError: unable to open database file",
        "Shard 'a' has no table 'order', 'payment', 'order_line'; run 'flask"
        " partition create-all --shard a'.",
    ]


def test_shards_other_map_and_bad_key(tmp_path: t.Any) -> None:
    class MapBase(PartitionModel, sa_orm.DeclarativeBase):
        pass

    db = PartitionDB(model_class=MapBase, shard_map=KeyIsShardName())
    app = Flask("maps", instance_path=str(tmp_path))
    app.config.update(
        PARTITION_DATABASE_URI="sqlite:///main.db",
        PARTITION_SHARDS={"eu": "sqlite:///eu.db", "us": "sqlite:///us.db"},
    )
    db.init_app(app)
    try:
        result = run(app, "shards", "--key", "us")
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert lines[0] == "Shard map: KeyIsShardName (buckets: hash maps only)."
        assert lines[3].split()[:3] == ["eu", "-", "-"]
        assert lines[-1] == "Key 'us' -> shard 'us'"
        result = run(app, "shards", "--key", "mars")
        assert result.exit_code == cli.EXIT_USAGE
        assert (
            "Invalid value for '--key': Shard 'mars' (the shard map's answer for key"
            " 'mars') is not configured." in result.stderr
        )
    finally:
        for engine in db.get_router(app).engines():
            engine.dispose()


# -- dev-cluster ---------------------------------------------------------------------


def test_dev_cluster_without_postgres(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flask_partition.pgcluster

    monkeypatch.setattr(
        flask_partition.pgcluster, "unavailable_reason", lambda: "no binaries here."
    )
    result = run(make_app(), "dev-cluster")
    assert result.exit_code == cli.EXIT_FAILED
    assert result.stderr == "Error: Cannot start PostgreSQL: no binaries here.\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "my bind"], "'my bind' cannot name a database"),
        (["--bind", "postgres"], "'postgres' cannot name a database"),
        (["--bind", "app"], "The database and the binds need distinct names."),
        (["--replicas", "-1"], "Invalid value for '--replicas'"),
    ],
)
def test_dev_cluster_checks_names(
    make_app: AppFactory, args: list[str], message: str
) -> None:
    result = run(make_app(), "dev-cluster", *args)
    assert result.exit_code == cli.EXIT_USAGE
    assert message in result.stderr


def test_export_lines_quote_for_the_shell() -> None:
    lines = cli.export_lines(
        {
            "PARTITION_DATABASE_URI": "postgresql+psycopg://u@h:5/app",
            "PARTITION_REPLICAS": ["postgresql+psycopg://u@h:6/app"],
            "PARTITION_SHARDS": {"eu": {"primary": "x'y", "replicas": []}},
        }
    )
    assert lines == [
        "export PARTITION_DATABASE_URI=postgresql+psycopg://u@h:5/app",
        "export PARTITION_REPLICAS='[\"postgresql+psycopg://u@h:6/app\"]'",
        'export PARTITION_SHARDS=\'{"eu": {"primary": "x\'"\'"\'y", "replicas": []}}\'',
    ]


def test_error_text_masks_an_echoed_password() -> None:
    """A driver may echo the password alone, outside any URL: the node's
    engine masks it, as the router's messages do.
    """
    engine = sa.create_engine("postgresql+psycopg://app:s3cret@db1:5432/app")
    error = sa.exc.OperationalError(
        "SELECT 1",
        {},
        Exception(
            "password 's3cret' rejected for postgresql://app:s3cret@db1/app\nDETAIL"
        ),
    )
    assert display.error_text(error, engine) == (
        "Exception: password '***' rejected for postgresql://app:***@db1/app"
    )
    engine.dispose()


def test_display_url_masks_passwords() -> None:
    url = sa.make_url("postgresql+psycopg://app:s3cret@db1:5432/app")
    assert display.display_url(url) == "postgresql+psycopg://app:***@db1:5432/app"
    sqlite = sa.make_url("sqlite:///file:/srv/app.db?uri=true&mode=ro")
    assert display.display_url(sqlite) == "sqlite:///file:/srv/app.db?mode=ro&uri=true"
    assert display.display_url(sa.make_url("sqlite://")) == "sqlite://"
