"""PostgresTopology's shard servers, on real servers: each shard is a primary
of its own with its own streaming replicas, apart from the main primary.
"""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa

from flask_partition.testing import PostgresNode
from flask_partition.testing import PostgresTopology
from flask_partition.testing import ShardServers
from pg_support import require_postgres


@pytest.fixture(scope="module")
def topology() -> t.Iterator[PostgresTopology]:
    """A main primary without replicas and two shard servers: 'eu' with one
    streaming replica, 'us' with none. Locally without PostgreSQL the tests
    skip; in CI they fail.
    """
    require_postgres()
    with PostgresTopology(
        replicas=0, databases=("app",), shards={"eu": 1, "us": 0}
    ) as pg:
        for node in _servers(pg):
            node.query("CREATE TABLE item (name text PRIMARY KEY)", database="app")
        pg.wait_for_replay()
        yield pg


@pytest.fixture(autouse=True)
def _clean(topology: PostgresTopology) -> t.Iterator[None]:
    yield
    eu = topology.shards["eu"]
    topology.resume_replay(*eu.replicas)
    for node in _servers(topology):
        node.query("DELETE FROM item", database="app")
    topology.wait_for_replay()


def _servers(pg: PostgresTopology) -> list[PostgresNode]:
    """The primaries: main first, then each shard's."""
    assert pg.primary is not None
    return [pg.primary, *(shard.primary for shard in pg.shards.values())]


def _items(node: PostgresNode) -> list[str]:
    return [row[0] for row in node.query("SELECT name FROM item", database="app")]


def _insert(node: PostgresNode, name: str) -> None:
    node.query("INSERT INTO item (name) VALUES (%s)", (name,), database="app")


def test_shards_are_distinct_servers(topology: PostgresTopology) -> None:
    assert list(topology.shards) == ["eu", "us"]
    eu, us = topology.shards["eu"], topology.shards["us"]
    assert isinstance(eu, ShardServers)
    assert eu.name == "eu" and us.name == "us"
    assert len(eu.replicas) == 1 and us.replicas == []
    assert topology.replicas == []
    nodes = [*_servers(topology), *eu.replicas]
    assert len({node.port for node in nodes}) == len(nodes)
    assert len({node.datadir for node in nodes}) == len(nodes)
    # Separate servers, not one server seen through several ports. (They
    # share the initdb template's system identifier: copies, not initdb runs.)
    assert {node.query("SHOW data_directory")[0][0] for node in nodes} == {
        node.datadir for node in nodes
    }
    for primary in _servers(topology):
        assert primary.query("SELECT pg_is_in_recovery()") == [(False,)]
        assert not primary.is_replica and primary.upstream is None
    (replica,) = eu.replicas
    assert replica.query("SELECT pg_is_in_recovery()") == [(True,)]
    assert replica.is_replica and replica.upstream is eu.primary
    assert replica.name == "eu_replica1"
    # It streams from eu's primary, through its own slot.
    assert eu.primary.query("SELECT slot_name, active FROM pg_replication_slots") == [
        ("eu_replica1", True)
    ]
    assert us.primary.query("SELECT count(*) FROM pg_replication_slots") == [(0,)]


def test_every_shard_has_the_databases(topology: PostgresTopology) -> None:
    eu = topology.shards["eu"]
    for node in [*_servers(topology), *eu.replicas]:
        assert node.query("SELECT datname FROM pg_database WHERE datname = 'app'") == [
            ("app",)
        ]


def test_row_on_a_shard_reaches_only_its_replica(topology: PostgresTopology) -> None:
    assert topology.primary is not None
    eu, us = topology.shards["eu"], topology.shards["us"]
    _insert(eu.primary, "eu-row")
    topology.wait_for_replay()  # no nodes: includes the shard replicas
    assert _items(eu.replicas[0]) == ["eu-row"]
    assert _items(eu.primary) == ["eu-row"]
    assert _items(us.primary) == []
    assert _items(topology.primary) == []


def test_wait_for_replay_compares_with_the_replicas_own_primary(
    topology: PostgresTopology,
) -> None:
    """The main primary's WAL position means nothing to eu's replica: with
    the main primary far ahead of eu's, waiting for eu's replica still
    returns, with eu's row replayed.
    """
    main = topology.primary
    assert main is not None
    eu = topology.shards["eu"]
    _insert(eu.primary, "eu-row")
    for index in range(20):  # move main's WAL to a later segment than eu's
        if _lsn_diff(main, eu.primary) > 0:
            break
        _insert(main, f"main-{index}")
        main.query("SELECT pg_switch_wal()")
    assert _lsn_diff(main, eu.primary) > 0
    topology.wait_for_replay(*eu.replicas, timeout=5)
    assert _items(eu.replicas[0]) == ["eu-row"]
    topology.wait_for_replay(timeout=5)  # all replicas, each its own primary


def _lsn_diff(a: PostgresNode, b: PostgresNode) -> int:
    """How many bytes of WAL ``a`` has written beyond ``b``."""
    (lsn,) = b.query("SELECT pg_current_wal_lsn()::text")[0]
    return int(
        a.query("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,))[0][0]
    )


def test_pause_and_resume_a_shard_replica(topology: PostgresTopology) -> None:
    eu = topology.shards["eu"]
    (replica,) = eu.replicas
    topology.pause_replay(replica)
    assert replica.query("SELECT pg_get_wal_replay_pause_state()") == [("paused",)]
    _insert(eu.primary, "late")
    assert _items(eu.primary) == ["late"]
    assert _items(replica) == []
    topology.resume_replay(replica)
    assert _items(replica) == ["late"]


def test_pause_replay_without_nodes_leaves_shard_replicas_alone(
    topology: PostgresTopology,
) -> None:
    eu = topology.shards["eu"]
    topology.pause_replay()  # main replicas only: none here
    _insert(eu.primary, "live")
    topology.wait_for_replay(*eu.replicas)
    assert _items(eu.replicas[0]) == ["live"]
    assert eu.replicas[0].query("SELECT pg_get_wal_replay_pause_state()") == [
        ("not paused",)
    ]


def test_config_urls_connect_with_sqlalchemy(topology: PostgresTopology) -> None:
    eu, us = topology.shards["eu"], topology.shards["us"]
    assert eu.config() == {
        "primary": eu.primary.url("app"),
        "replicas": [eu.replicas[0].url("app")],
    }
    assert us.config("app") == {"primary": us.primary.url("app"), "replicas": []}
    _insert(eu.primary, "via-sqlalchemy")
    topology.wait_for_replay()
    config = eu.config("app")
    urls = [t.cast(str, config["primary"]), *t.cast(list[str], config["replicas"])]
    expected = [(False, "via-sqlalchemy"), (True, "via-sqlalchemy")]
    seen = []
    for url in urls:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                seen.append(
                    conn.execute(
                        sa.text("SELECT pg_is_in_recovery(), name FROM item")
                    ).one()
                )
        finally:
            engine.dispose()
    assert [tuple(row) for row in seen] == expected


def test_shard_names_are_checked() -> None:
    require_postgres()
    with pytest.raises(ValueError, match="Shard name"):
        PostgresTopology(shards={"EU west": 0})
    with pytest.raises(ValueError, match="replica count"):
        PostgresTopology(shards={"eu": -1})


def test_failed_start_stops_every_server(tmp_path: t.Any) -> None:
    """One shard server failing mid-start stops the servers the other
    threads started, and removes the folder.
    """
    require_postgres()
    started: list[PostgresNode] = []

    class Failing(PostgresTopology):
        def _start_server(
            self,
            template: str,
            primary: PostgresNode,
            replicas: list[PostgresNode],
            prefix: str,
            count: int,
        ) -> None:
            super()._start_server(template, primary, replicas, prefix, count)
            started.extend([primary, *replicas])
            if prefix == "us_":
                raise RuntimeError("us failed")

    pg = Failing(replicas=1, databases=("app",), shards={"eu": 1, "us": 0})
    with pytest.raises(RuntimeError, match="us failed"):
        pg.start()
    assert len(started) == 5
    assert pg.primary is None and pg.shards == {} and pg.base == ""
    for node in started:
        assert not node.running
        with pytest.raises(Exception, match="(?i)connect|refused"):
            node.query("SELECT 1")
