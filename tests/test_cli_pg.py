"""``flask partition`` on real PostgreSQL servers: every node in status,
replica lag in bytes and seconds, an unreachable node, no password shown,
tables per shard, and a dev cluster started and stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
import typing as t

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask

from flask_partition import cli
from flask_partition.cli import devcluster
from flask_partition.testing import PostgresNode
from flask_partition.testing import PostgresTopology
from pg_support import require_postgres
from shard_models import Order
from shard_models import sdb
from shard_models import ShardAppFactory


@pytest.fixture(autouse=True)
def _drop_tables_afterwards(request: pytest.FixtureRequest) -> t.Iterator[None]:
    """Leave the shared servers without this module's tables, which other
    modules do not expect in their databases.
    """
    if "make_pg_shard_app" not in request.fixturenames:
        yield
        return
    factory = request.getfixturevalue("make_pg_shard_app")
    yield
    with factory().app_context():
        sdb.drop_all()


def run(app: Flask, *args: str, input: str | None = None) -> Result:
    return app.test_cli_runner().invoke(args=["partition", *args], input=input)


def status(app: Flask) -> tuple[int, dict[tuple[str | None, str], dict[str, t.Any]]]:
    result = run(app, "status", "--json", "--timeout", "3")
    data = json.loads(result.stdout)
    nodes = {(n["cluster"], f"{n['role']}{n['index']}"): n for n in data["nodes"]}
    return result.exit_code, nodes


def test_status_shows_every_node(
    pg: PostgresTopology, make_pg_shard_app: ShardAppFactory
) -> None:
    app = make_pg_shard_app()
    result = run(app, "status")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:-1]]
    assert [row[:4] for row in rows] == [
        ["default", "default", "primary", "ok"],
        ["default", "default", "replica[0]", "ok"],
        ["default", "default", "replica[1]", "ok"],
        ["analytics", "bind", "primary", "ok"],
        ["eu", "shard", "primary", "ok"],
        ["eu", "shard", "replica[0]", "ok"],
        ["us", "shard", "primary", "ok"],
        ["ap", "shard", "primary", "ok"],
    ]
    assert pg.primary is not None
    assert rows[0][7] == pg.primary.url("app")
    assert rows[5][7] == pg.shards["eu"].replicas[0].url("app")
    # Primaries have no lag; caught-up replicas (next to) none.
    assert rows[0][4:6] == ["-", "-"]
    for row in (rows[1], rows[2], rows[5]):
        assert int(row[4]) < 10_000 and float(row[5]) < 5
    assert result.stdout.splitlines()[-1] == "8 of 8 nodes reachable."


def test_status_measures_replica_lag(
    pg: PostgresTopology, make_pg_shard_app: ShardAppFactory
) -> None:
    app = make_pg_shard_app(
        PARTITION_REPLICA_MAX_LAG_BYTES=100_000, PARTITION_REPLICA_MAX_LAG=3600
    )
    eu = pg.shards["eu"]
    pg.pause_replay(*eu.replicas)
    eu.primary.query(
        'INSERT INTO "order" (customer_id, amount, note)'
        " SELECT i, i, repeat('x', 100) FROM generate_series(1, 3000) AS i",
        database="app",
    )
    code, nodes = status(app)
    assert code == 0
    behind = nodes[("eu", "replica0")]
    assert behind["reachable"] is True
    assert behind["lag_bytes"] > 300_000  # 3000 rows of 100+ bytes
    assert behind["lag_seconds"] > 0
    assert behind["behind_primary_bytes"] >= 300_000
    # Beyond the app's byte limit (received, not replayed), not its 1 h one.
    (note,) = behind["notes"]
    assert re.fullmatch(
        r"\d+ bytes received but not replayed, above"
        r" 'PARTITION_REPLICA_MAX_LAG_BYTES' \(100000\): the app reads elsewhere",
        note,
    )
    assert all(n["notes"] == [] for n in nodes.values() if n is not behind)
    text = run(app, "status")
    assert f"shard 'eu' replica[0]: {note}" in text.stderr
    for key in ((None, "replica0"), (None, "replica1")):
        assert nodes[key]["lag_bytes"] < 10_000
    assert nodes[("eu", "primary0")]["lag_bytes"] is None
    pg.resume_replay(*eu.replicas)
    code, nodes = status(app)
    assert nodes[("eu", "replica0")]["lag_bytes"] < 10_000
    assert nodes[("eu", "replica0")]["lag_seconds"] < 5


def test_status_lag_is_what_the_router_sees(
    pg: PostgresTopology, make_pg_shard_app: ShardAppFactory
) -> None:
    """A replica cut off from its primary has replayed all it received: the
    router sees no lag and keeps reading from it, and so does 'status'. Only
    'behind_primary_bytes' shows how far behind the primary it is.
    """
    app = make_pg_shard_app(
        PARTITION_REPLICA_MAX_LAG_BYTES=100_000, PARTITION_REPLICA_MAX_LAG=0.5
    )
    eu = pg.shards["eu"]
    (replica,) = eu.replicas
    pg.wait_for_replay(replica)
    ((conninfo,),) = replica.query("SHOW primary_conninfo")
    replica.query("ALTER SYSTEM SET primary_conninfo = ''")
    replica.query("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 10
        while replica.query("SELECT count(*) FROM pg_stat_wal_receiver")[0][0]:
            assert time.monotonic() < deadline, "the WAL receiver did not stop"
            time.sleep(0.05)
        time.sleep(1)  # its last replayed commit is older than the 0.5 s limit
        eu.primary.query(
            'INSERT INTO "order" (customer_id, amount, note)'
            " SELECT i, i, repeat('x', 100) FROM generate_series(1, 3000) AS i",
            database="app",
        )
        code, nodes = status(app)
        with app.app_context():
            cluster = sdb.get_router().shards["eu"]
            probe = cluster.probe(0)
            reads_it = cluster.lag_ok(0)
    finally:
        quoted = conninfo.replace("'", "''")
        replica.query(f"ALTER SYSTEM SET primary_conninfo = '{quoted}'")
        replica.query("SELECT pg_reload_conf()")
        pg.wait_for_replay(replica)
    assert code == 0
    cut_off = nodes[("eu", "replica0")]
    assert probe is not None and reads_it
    assert (
        (cut_off["lag_bytes"], cut_off["lag_seconds"])
        == (
            probe.lag_bytes,
            probe.lag,
        )
        == (0, 0.0)
    )
    assert cut_off["notes"] == []
    assert cut_off["behind_primary_bytes"] > 300_000


def test_status_unreachable_node_exits_1(
    pg: PostgresTopology, make_pg_shard_app: ShardAppFactory
) -> None:
    app = make_pg_shard_app()
    stopped = pg.replicas[1]
    pg.stop_node(stopped)
    try:
        result = run(app, "status", "--timeout", "2")
    finally:
        pg.start_node(stopped)
        pg.wait_for_replay()
    assert result.exit_code == cli.EXIT_FAILED
    rows = [line.split()[:4] for line in result.stdout.splitlines()[1:]]
    assert rows[2] == ["default", "default", "replica[1]", "UNREACHABLE"]
    assert sum(row[3] == "ok" for row in rows) == 7
    errors = result.stderr.splitlines()
    assert errors[0].startswith("the default cluster replica[1]: OperationalError: ")
    assert "Connection refused" in errors[0]
    assert errors[-1] == "7 of 8 nodes reachable."


def test_status_never_shows_a_password(
    pg: PostgresTopology, make_pg_shard_app: ShardAppFactory
) -> None:
    assert pg.primary is not None

    def with_password(url: str) -> str:
        return url.replace("postgres@", "postgres:s3cret-pw@")

    closed = PostgresNode("closed", "", 9, is_replica=True)  # nothing listens on 9
    app = make_pg_shard_app(
        PARTITION_DATABASE_URI=with_password(pg.primary.url("app")),
        PARTITION_REPLICAS=[
            with_password(pg.replicas[0].url("app")),
            with_password(closed.url("app")),
        ],
        PARTITION_SHARDS={"eu": with_password(pg.shards["eu"].primary.url("app"))},
    )
    for args in (["status"], ["status", "--json"], ["shards"], ["create-all"]):
        result = run(app, *args)
        assert "s3cret" not in result.output, args
        assert "postgres:***@127.0.0.1" in result.output, args
    result = run(app, "status")
    assert result.exit_code == cli.EXIT_FAILED  # the closed port
    assert "the default cluster replica[1]: OperationalError:" in result.stderr


def test_drop_and_create_one_shard(
    pg: PostgresTopology, make_pg_shard_app: ShardAppFactory
) -> None:
    app = make_pg_shard_app()
    eu, us = pg.shards["eu"], pg.shards["us"]

    def tables(node: PostgresNode) -> list[str]:
        rows = node.query(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' ORDER BY 1",
            database="app",
        )
        return [name for (name,) in rows]

    result = run(app, "drop-all", "--shard", "eu", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"shard 'eu' ({eu.primary.url('app')}): dropped 3 tables:"
        " order, payment, order_line\n"
    )
    pg.wait_for_replay()
    assert tables(eu.primary) == tables(eu.replicas[0]) == []
    assert tables(us.primary) == ["order", "order_line", "payment"]
    result = run(app, "create-all", "--shard", "eu")
    assert result.exit_code == 0
    assert result.stdout.endswith("created 3 tables: order, payment, order_line\n")
    assert tables(eu.primary) == ["order", "order_line", "payment"]


def test_shards_count_rows_on_each_server(
    pg: PostgresTopology, make_pg_shard_app: ShardAppFactory
) -> None:
    app = make_pg_shard_app()
    with app.app_context():
        sdb.session.add_all(Order(customer_id=key, amount=1) for key in range(1, 41))
        sdb.session.commit()
    pg.wait_for_replay()
    result = run(app, "shards", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    for name, shard in pg.shards.items():
        ((count,),) = shard.primary.query(
            'SELECT count(*) FROM "order"', database="app"
        )
        assert data["shards"][name]["rows"]["order"] == count
    assert sum(s["rows"]["order"] for s in data["shards"].values()) == 40
    # eu is counted on its replica.
    assert data["shards"]["eu"]["url"] == pg.shards["eu"].replicas[0].url("app")


def test_dev_cluster_starts_and_stops_servers(
    make_app: t.Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: t.Any,
) -> None:
    """Run the command in-process; while it waits, connect to what it
    printed, then let it stop.
    """
    require_postgres()
    env_file = tmp_path / "partition.env"
    seen: dict[str, t.Any] = {}

    def check_while_running() -> None:
        config: dict[str, t.Any] = {}
        for line in env_file.read_text().splitlines():
            name, _, value = shlex.split(line)[1].partition("=")
            config[name] = value if name.endswith("_URI") else json.loads(value)
        seen["config"] = config
        urls = {
            "primary": config["PARTITION_DATABASE_URI"],
            "replica": config["PARTITION_REPLICAS"][0],
            "audit": config["PARTITION_BINDS"]["audit"]["primary"],
            "eu": config["PARTITION_SHARDS"]["eu"]["primary"],
        }
        for name, url in urls.items():
            engine = sa.create_engine(url)
            try:
                with engine.connect() as conn:
                    seen[name] = conn.execute(
                        sa.text("SELECT current_database(), pg_is_in_recovery()")
                    ).one()
            finally:
                engine.dispose()

    monkeypatch.setattr(devcluster, "_wait_for_stop", check_while_running)
    app = make_app()  # binds: 'analytics'; no shards
    result = run(
        app,
        "dev-cluster",
        "--bind",
        "audit",
        "--shard",
        "eu",
        "--shard-replicas",
        "0",
        "--env-file",
        str(env_file),
    )
    assert result.exit_code == 0, result.output
    assert tuple(seen["primary"]) == ("app", False)
    assert tuple(seen["replica"]) == ("app", True)
    assert tuple(seen["audit"]) == ("audit", False)
    assert tuple(seen["eu"]) == ("app", False)
    config = seen["config"]
    assert list(config) == [
        "PARTITION_DATABASE_URI",
        "PARTITION_REPLICAS",
        "PARTITION_BINDS",
        "PARTITION_SHARDS",
    ]
    assert config["PARTITION_SHARDS"]["eu"]["replicas"] == []
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# Flask-Partition dev cluster in ")
    assert [line for line in lines if line.startswith("export ")] == (
        cli.export_lines(config)
    )
    assert lines[-1] == "# Press Ctrl-C to stop the servers and delete their data."
    assert result.stderr.splitlines() == [
        "Starting 3 PostgreSQL servers...",
        "Stopped the servers and deleted their data.",
    ]
    # Stopped: the folder is gone, nothing listens, the env file is removed.
    base = lines[0].removeprefix("# Flask-Partition dev cluster in ")
    assert not os.path.exists(base)
    assert not env_file.exists()
    engine = sa.create_engine(config["PARTITION_DATABASE_URI"])
    try:
        with pytest.raises(sa.exc.OperationalError):
            engine.connect()
    finally:
        engine.dispose()


def test_dev_cluster_defaults_follow_the_app(
    make_shard_app: ShardAppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --bind and --shard, the app's binds and shards are started."""
    require_postgres()
    monkeypatch.setattr(devcluster, "_wait_for_stop", lambda: None)
    result = run(
        make_shard_app(), "dev-cluster", "--replicas", "0", "--shard-replicas", "0"
    )
    assert result.exit_code == 0, result.output
    assert "#   bind 'analytics': database 'analytics' on the same servers" in (
        result.stdout
    )
    for name in ("a", "b", "c"):
        assert f"#   shard {name!r}: 127.0.0.1:" in result.stdout
    assert result.stderr.startswith("Starting 4 PostgreSQL servers...")


def test_dev_cluster_refuses_bad_shard_names(make_app: t.Callable[..., Flask]) -> None:
    require_postgres()
    result = run(make_app(), "dev-cluster", "--shard", "EU West")
    assert result.exit_code == cli.EXIT_USAGE
    assert (
        "Invalid value for '--shard': Shard name 'EU West' must be 1-40 lowercase"
        " letters, digits or '_'." in result.stderr
    )
