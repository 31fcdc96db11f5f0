"""Commits over several shard servers: the order and the partial-commit
report of 'best_effort', the refusal of 'single', and 'two_phase' with its
recovery after a crash, on real PostgreSQL servers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_partition import commit_mode
from flask_partition import CrossShardWriteError
from flask_partition import PartialCommitError
from flask_partition.testing import PostgresTopology
from flask_partition.transactions import commit_log
from flask_partition.transactions import recover
from shard_models import keys_by_shard
from shard_models import Order
from shard_models import sdb
from shard_models import ShardAppFactory

SHARDS = ("eu", "us", "ap")


def _ids_on(pg: PostgresTopology, shard: str) -> list[int]:
    rows = pg.shards[shard].primary.query(
        'SELECT id FROM "order" ORDER BY id', database="app"
    )
    return [row[0] for row in rows]


def _prepared(pg: PostgresTopology) -> list[str]:
    gids = []
    for shard in pg.shards.values():
        rows = shard.primary.query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = 'app'",
            database="app",
        )
        gids += [row[0] for row in rows]
    return gids


def _kill_connection(shard: str) -> None:
    """Terminate the server process behind the session's connection to a
    shard's primary: its next statement (COMMIT, PREPARE) fails.
    """
    connection = sdb.session.connection(bind_arguments={"shard_id": shard})
    pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    engine = sdb.get_router().shards[shard].primary
    with engine.connect() as other:
        other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")


def _add_orders(keys: dict[str, list[int]], *shards: str, first_id: int = 1) -> None:
    for number, shard in enumerate(shards, start=first_id):
        sdb.session.add(Order(id=number, customer_id=keys[shard][0], amount=number))


def test_best_effort_commits_in_order_and_reports_a_partial_commit(
    make_pg_shard_app: ShardAppFactory,
    pg: PostgresTopology,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_pg_shard_app()
    keys = keys_by_shard(app, SHARDS)
    caplog.set_level(logging.ERROR, logger="flask_partition")
    with app.app_context():
        # Added in the reverse of the commit order: the order is the
        # config's ('eu', 'us', 'ap'), not the session's.
        _add_orders(keys, "ap", "us", "eu")
        sdb.session.flush()
        _kill_connection("us")
        with pytest.raises(PartialCommitError) as caught:
            sdb.session.commit()
    error = caught.value
    assert error.committed == ["shard 'eu'"]
    assert error.failed == "shard 'us'"
    assert error.rolled_back == ["shard 'ap'"]
    assert str(error).startswith(
        "Partial commit: shard 'eu' committed, then the commit of shard 'us' failed ("
    )
    assert str(error).endswith(
        "); rolled back: shard 'ap'. Use 'two_phase' mode where this must not happen."
    )
    assert str(error) in [
        r.getMessage() for r in caplog.records if r.name == "flask_partition"
    ]
    assert _ids_on(pg, "eu") == [3]
    assert _ids_on(pg, "us") == []
    assert _ids_on(pg, "ap") == []


def test_best_effort_commits_every_shard_when_all_succeed(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app()
    keys = keys_by_shard(app, SHARDS)
    with app.app_context():
        _add_orders(keys, *SHARDS)
        sdb.session.commit()
    assert [_ids_on(pg, shard) for shard in SHARDS] == [[1], [2], [3]]


def test_single_mode_refuses_a_second_shard_before_any_sql(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app(PARTITION_COMMIT_MODE="single")
    keys = keys_by_shard(app, SHARDS)
    message = (
        "This unit of work writes to shards 'eu', 'us', but the commit mode"
        " is 'single': one transaction may write to one shard only. Nothing"
        " more was sent; roll back, then write each shard in its own"
        " transaction, or use the 'two_phase' commit mode."
    )
    with app.app_context():
        _add_orders(keys, "eu", "us")
        with pytest.raises(CrossShardWriteError) as caught:
            sdb.session.flush()
        assert str(caught.value) == message
        sdb.session.rollback()
        # One shard per transaction is fine.
        _add_orders(keys, "eu")
        sdb.session.commit()
        # Core statements are checked when they are routed.
        sdb.session.execute(
            sa.insert(Order), [{"id": 10, "customer_id": keys["eu"][1], "amount": 0}]
        )
        with pytest.raises(CrossShardWriteError) as caught:
            sdb.session.execute(
                sa.insert(Order),
                [{"id": 11, "customer_id": keys["us"][1], "amount": 0}],
            )
        assert str(caught.value) == message
        sdb.session.rollback()
    assert _ids_on(pg, "eu") == [1]
    assert _ids_on(pg, "us") == []


def test_commit_mode_block_overrides_the_config(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app()
    keys = keys_by_shard(app, SHARDS)
    with app.app_context(), commit_mode("single"):
        _add_orders(keys, "eu", "ap")
        with pytest.raises(CrossShardWriteError):
            sdb.session.commit()
    with pytest.raises(ValueError) as info:
        commit_mode("xa")
    assert str(info.value) == (
        "'commit_mode' must be one of 'best_effort', 'single', 'two_phase', got 'xa'."
    )
    assert _ids_on(pg, "eu") == [] and _ids_on(pg, "ap") == []


def test_two_phase_commits_all_shards_and_leaves_nothing_prepared(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app(PARTITION_COMMIT_MODE="two_phase")
    keys = keys_by_shard(app, SHARDS)
    prepared: list[str] = []

    def on_prepare(connection: sa.Connection, xid: t.Any) -> None:
        prepared.append(xid)

    with app.app_context():
        engines = [sdb.get_router().shards[s].primary for s in SHARDS]
        for engine in engines:
            sa.event.listen(engine, "prepare_twophase", on_prepare)
        try:
            _add_orders(keys, *SHARDS)
            sdb.session.commit()
        finally:
            for engine in engines:
                sa.event.remove(engine, "prepare_twophase", on_prepare)
        with sdb.get_router().default.primary.connect() as connection:
            assert connection.scalars(sa.select(commit_log.c.gtrid)).all() == []
    # One global id, a suffix per cluster (its rank in the commit order).
    gtrids = {xid.split(".")[1] for xid in prepared}
    assert len(gtrids) == 1
    assert sorted(xid.split(".")[2] for xid in prepared) == ["2", "3", "4"]
    assert [_ids_on(pg, shard) for shard in SHARDS] == [[1], [2], [3]]
    assert _prepared(pg) == []


def test_two_phase_failure_during_prepare_rolls_back_every_shard(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app(PARTITION_COMMIT_MODE="two_phase")
    keys = keys_by_shard(app, SHARDS)
    with app.app_context():
        _add_orders(keys, *SHARDS)
        sdb.session.flush()
        _kill_connection("us")
        with pytest.raises(sa.exc.OperationalError):
            sdb.session.commit()
        sdb.session.rollback()
    assert [_ids_on(pg, shard) for shard in SHARDS] == [[], [], []]
    assert _prepared(pg) == []


@pytest.mark.parametrize(
    ("when", "decision", "rows"),
    [("before-record", "rollback", []), ("after-record", "commit", [1])],
)
def test_recover_resolves_what_a_killed_process_left_prepared(
    make_pg_shard_app: ShardAppFactory,
    pg: PostgresTopology,
    when: str,
    decision: str,
    rows: list[int],
) -> None:
    app = make_pg_shard_app(PARTITION_COMMIT_MODE="two_phase")
    keys = keys_by_shard(app, SHARDS)
    config = {
        key: value
        for key, value in app.config.items()
        if key.startswith("PARTITION_") or key == "SECRET_KEY"
    }
    config["ORDERS"] = [[1, keys["eu"][0]], [2, keys["us"][0]]]
    here = os.path.dirname(__file__)
    child = subprocess.run(
        [
            sys.executable,
            os.path.join(here, "twophase_child.py"),
            json.dumps(config),
            when,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", ""),
        },
    )
    assert child.returncode == 3, child.stderr
    gtrid = child.stdout.strip()
    assert sorted(_prepared(pg)) == [f"fp1.{gtrid}.2", f"fp1.{gtrid}.3"]

    with app.app_context():
        router = sdb.get_router()
        # Too young: a commit could still be running.
        assert {d.decision for d in recover(router, min_age=3600)} == {"wait"}
        dry = recover(router, dry_run=True, min_age=0)
        assert sorted((d.cluster, d.gid, d.decision) for d in dry) == [
            ("shard 'eu'", f"fp1.{gtrid}.2", decision),
            ("shard 'us'", f"fp1.{gtrid}.3", decision),
        ]
        assert len(_prepared(pg)) == 2  # a dry run changes nothing
    result = app.test_cli_runner().invoke(
        args=["partition", "recover", "--dry-run", "--min-age", "0"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "CLUSTER",
        "PREPARED",
        "TRANSACTION",
        "PREPARED",
        "AT",
        "DECISION",
    ]
    assert sorted(line.split()[2] for line in lines[1:3]) == [
        f"fp1.{gtrid}.2",
        f"fp1.{gtrid}.3",
    ]
    assert {line.split()[-1] for line in lines[1:3]} == {decision}
    assert lines[3] == "Dry run: nothing was committed or rolled back."
    waiting = app.test_cli_runner().invoke(args=["partition", "recover"])
    assert waiting.exit_code == 1
    assert waiting.output.splitlines()[-1] == (
        "2 prepared transactions younger than 60 s left alone; run again later."
    )
    assert len(_prepared(pg)) == 2
    with app.app_context():
        router = sdb.get_router()
        done = recover(router, min_age=0)
        assert sorted(d.decision for d in done) == [decision, decision]
        with router.default.primary.connect() as connection:
            assert connection.scalars(sa.select(commit_log.c.gtrid)).all() == []
    assert _prepared(pg) == []
    assert _ids_on(pg, "eu") == rows
    assert _ids_on(pg, "us") == ([2] if rows else [])
    # No lock is left: an exclusive lock is granted at once.
    for shard in ("eu", "us"):
        pg.shards[shard].primary.query(
            "BEGIN; SET LOCAL lock_timeout = '1s';"
            ' LOCK TABLE "order" IN ACCESS EXCLUSIVE MODE; COMMIT',
            database="app",
        )


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        (
            None,
            "needs PostgreSQL, but the primary of the default cluster is"
            " 'sqlite'. Use 'best_effort' or 'single'.",
        ),
        (
            "2.0.48",
            "needs SQLAlchemy 2.0.58 or later (this is 2.0.48): older"
            " releases (2.0.48 was tested) do not roll back the other clusters"
            " when one PREPARE fails. Upgrade SQLAlchemy.",
        ),
    ],
    ids=["sqlite", "old-sqlalchemy"],
)
def test_two_phase_refuses_to_start_where_it_cannot_work(
    tmp_path: t.Any,
    monkeypatch: pytest.MonkeyPatch,
    version: str | None,
    reason: str,
) -> None:
    if version is not None:
        monkeypatch.setattr(sa, "__version__", version)
    app = Flask("twophase-refused", instance_path=str(tmp_path))
    app.config.update(
        PARTITION_DATABASE_URI="sqlite:///app.db",
        PARTITION_COMMIT_MODE="two_phase",
    )
    with pytest.raises(RuntimeError) as info:
        sdb.init_app(app)
    assert str(info.value) == (
        "'PARTITION_COMMIT_MODE' is 'two_phase'. The 'two_phase' commit mode " + reason
    )
