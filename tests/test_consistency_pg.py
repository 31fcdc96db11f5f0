"""Read-your-writes across requests, replica failover and primary loss,
proven on a real primary with two streaming replicas.

Which node answered is shown two ways: by a row that paused replicas have not
replayed, and by the ``X-Partition-Route`` debug header.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import threading
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_partition import PrimaryUnavailableError
from flask_partition import TOKEN_HEADER
from flask_partition import use_primary
from flask_partition.routing import Role
from flask_partition.signals import replica_state_changed
from flask_partition.testing import PostgresTopology
from flask_partition.testing import RoutingRecorder
from partition_models import AppFactory
from partition_models import Author
from partition_models import author_views
from partition_models import db


def _shop(app: Flask) -> Flask:
    """Give ``app`` the author views and a 503 for a lost primary."""
    author_views(app)

    @app.errorhandler(PrimaryUnavailableError)
    def primary_down(error: PrimaryUnavailableError) -> tuple[str, int]:
        return "primary down", 503

    return app


@pytest.fixture
def shop(make_pg_app: AppFactory) -> t.Callable[..., Flask]:
    def factory(**config: t.Any) -> Flask:
        config.setdefault("PARTITION_DEBUG_HEADER", True)
        return _shop(make_pg_app(**config))

    return factory


def _forge(token: str) -> str:
    """Raise the position in a token, keeping its old signature."""
    payload, rest = token.split(".", 1)
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data[0][1] += 1 << 40
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")
    return f"{forged.decode()}.{rest}"


def _route(response: t.Any) -> str:
    return t.cast(str, response.headers["X-Partition-Route"])


def test_token_gives_the_writer_its_write_while_others_read_replicas(
    pg: PostgresTopology, shop: t.Callable[..., Flask]
) -> None:
    app = shop()
    pg.pause_replay()
    writer, other = app.test_client(), app.test_client()
    response = writer.post("/authors/ann")
    assert response.status_code == 200
    token = response.headers[TOKEN_HEADER]
    cookie = writer.get_cookie("partition")
    assert cookie is not None and cookie.value == token
    assert cookie.http_only and cookie.same_site == "Lax"

    # Request 2 of the writer: no replica has replayed its commit.
    mine = writer.get("/authors")
    assert mine.json == {"names": ["ann"]}
    assert _route(mine) == "default/primary x1"
    # A client without a token is still served by a replica, which has not
    # replayed the row.
    theirs = other.get("/authors")
    assert theirs.json == {"names": []}
    assert "replica" in _route(theirs)

    # An API client that sends the header instead of the cookie.
    api = app.test_client(use_cookies=False)
    assert api.get("/authors", headers={TOKEN_HEADER: token}).json == {"names": ["ann"]}
    assert api.get("/authors").json == {"names": []}


def test_token_prefers_a_replica_that_caught_up_over_the_primary(
    pg: PostgresTopology, shop: t.Callable[..., Flask]
) -> None:
    app = shop(PARTITION_REPLICA_CHECK_INTERVAL=0.0)
    lagging, current = pg.replicas
    pg.pause_replay(lagging)
    client = app.test_client()
    assert client.post("/authors/bea").status_code == 200
    pg.wait_for_replay(current)
    # Round robin offers replica[0] to every other session: each time it is
    # behind the token and replica[1] answers, never the primary.
    for _ in range(4):
        response = client.get("/authors")
        assert response.json == {"names": ["bea"]}
        assert _route(response) == "default/replica[1] x1"
    # The token is kept: replica[0] would still show the old data.
    assert client.get_cookie("partition") is not None


def test_token_is_dropped_once_every_replica_replayed_it(
    pg: PostgresTopology, shop: t.Callable[..., Flask]
) -> None:
    app = shop(PARTITION_REPLICA_CHECK_INTERVAL=0.0)
    client = app.test_client()
    assert client.post("/authors/cy").status_code == 200
    pg.wait_for_replay()
    # Each read probes the replica it is offered; once both were seen past
    # the token, the response clears it.
    cleared = None
    for _ in range(4):
        response = client.get("/authors")
        assert response.json == {"names": ["cy"]}
        if response.headers.get(TOKEN_HEADER) == "":
            cleared = response
            break
    assert cleared is not None
    assert client.get_cookie("partition") is None
    assert TOKEN_HEADER not in client.get("/authors").headers


@pytest.mark.parametrize(
    "mangle",
    [
        lambda token: token[:-3],  # truncated
        lambda token: _forge(token),
        lambda token: "not a token at all",
        lambda token: token.replace(".", "", 1),
    ],
    ids=["truncated", "forged-signature", "garbage", "malformed"],
)
def test_bad_tokens_are_ignored(
    pg: PostgresTopology,
    shop: t.Callable[..., Flask],
    mangle: t.Callable[[str], str],
) -> None:
    app = shop()
    pg.pause_replay()
    token = app.test_client().post("/authors/dee").headers[TOKEN_HEADER]
    client = app.test_client(use_cookies=False)
    response = client.get("/authors", headers={TOKEN_HEADER: mangle(token)})
    assert response.status_code == 200
    assert response.json == {"names": []}  # a replica, as without a token
    assert "replica" in _route(response)
    # A token signed with another secret is no better.
    other = shop(SECRET_KEY="another secret")
    forged = other.test_client().post("/authors/eve").headers[TOKEN_HEADER]
    response = client.get("/authors", headers={TOKEN_HEADER: forged})
    assert response.status_code == 200 and "replica" in _route(response)


def _with_password(url: str) -> str:
    # Trust authentication ignores it; it is there to prove it never shows.
    return sa.make_url(url).set(password="s3cr3t-pw").render_as_string(False)


def test_replica_killed_under_load_fails_no_request(
    pg: PostgresTopology,
    shop: t.Callable[..., Flask],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = shop(
        PARTITION_REPLICA_COOLDOWN=0.3,
        PARTITION_REPLICAS=[_with_password(r.url("app")) for r in pg.replicas],
    )
    caplog.set_level(logging.DEBUG, logger="flask_partition")
    assert app.test_client().post("/authors/fay").status_code == 200
    pg.wait_for_replay()
    events: list[tuple[int, str]] = []

    def on_change(sender: Flask, **info: t.Any) -> None:
        events.append((info["replica"], info["state"]))

    victim = pg.replicas[0]
    statuses: list[int] = []
    lock = threading.Lock()
    started = threading.Event()

    def request(number: int) -> None:
        if number == 60:
            started.set()
        response = app.test_client(use_cookies=False).get("/authors")
        with lock:
            statuses.append(response.status_code)
        assert response.json == {"names": ["fay"]}

    with replica_state_changed.connected_to(on_change, app):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(request, n) for n in range(200)]
            started.wait(30)
            pg.stop_node(victim)
            for future in futures:
                future.result()
        assert statuses == [200] * 200
        assert (0, "down") in events

        pg.start_node(victim)
        pg.wait_for_replay(victim)
        time.sleep(0.3)  # the cool-down
        routes = {
            _route(app.test_client(use_cookies=False).get("/authors")) for _ in range(6)
        }
        assert "default/replica[0] x1" in routes
        assert events[-1] == (0, "up")
    assert "replica[0] of the default cluster (postgresql+psycopg://postgres:***@" in (
        caplog.text
    )
    assert "is reachable again" in caplog.text
    assert "s3cr3t-pw" not in caplog.text


def test_all_replicas_down_reads_use_the_primary(
    pg: PostgresTopology, shop: t.Callable[..., Flask]
) -> None:
    app = shop()
    assert app.test_client().post("/authors/gus").status_code == 200
    pg.wait_for_replay()
    for replica in pg.replicas:
        pg.stop_node(replica)
    try:
        routes = []
        for _ in range(3):
            response = app.test_client(use_cookies=False).get("/authors")
            assert response.json == {"names": ["gus"]}
            routes.append(_route(response))
        # The first read finds both replicas down, then the breaker skips
        # them without trying.
        assert routes == [
            "default/replica[0] x1, default/replica[1] x1, default/primary x1",
            "default/primary x1",
            "default/primary x1",
        ]
    finally:
        for replica in pg.replicas:
            pg.start_node(replica)
        pg.wait_for_replay()


def test_primary_down_fails_writes_clearly_and_replicas_still_read(
    pg: PostgresTopology,
    shop: t.Callable[..., Flask],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert pg.primary is not None
    primary = pg.primary
    app = shop(PARTITION_DATABASE_URI=_with_password(primary.url("app")))
    assert app.test_client().post("/authors/hal").status_code == 200
    pg.wait_for_replay()
    caplog.set_level(logging.DEBUG, logger="flask_partition")
    pg.stop_node(primary)
    try:
        client = app.test_client()
        assert client.post("/authors/ivy").status_code == 503
        assert client.get("/authors").json == {"names": ["hal"]}
        with app.app_context():
            db.session.add(Author(name="joe"))
            with pytest.raises(PrimaryUnavailableError) as caught:
                db.session.commit()
        message = str(caught.value)
        assert message.startswith(
            "The primary of the default cluster (postgresql+psycopg://"
            f"postgres:***@127.0.0.1:{primary.port}/app) is unreachable: "
        )
        assert caught.value.cluster is None
        assert isinstance(caught.value, sa.exc.OperationalError)
        assert "s3cr3t-pw" not in message
        assert "s3cr3t-pw" not in caplog.text
    finally:
        pg.start_node(primary)
        pg.wait_for_replay()
    # Nothing was half-written.
    assert app.test_client().get("/authors").json == {"names": ["hal"]}


def test_lag_limit_skips_a_delayed_replica(
    pg: PostgresTopology, shop: t.Callable[..., Flask]
) -> None:
    app = shop(PARTITION_REPLICA_MAX_LAG=1.0, PARTITION_REPLICA_CHECK_INTERVAL=0.0)
    slow = pg.replicas[0]
    slow.query("ALTER SYSTEM SET recovery_min_apply_delay = '30s'")
    slow.query("SELECT pg_reload_conf()")
    try:
        assert pg.primary is not None
        time.sleep(1.1)  # older than the limit: the last replayed commit
        pg.primary.query(
            "INSERT INTO author (name, counter) VALUES ('kim', 0)", database="app"
        )
        pg.wait_for_replay(pg.replicas[1])
        for _ in range(4):
            response = app.test_client(use_cookies=False).get("/authors")
            assert response.json == {"names": ["kim"]}
            assert _route(response) == "default/replica[1] x1"
    finally:
        slow.query("ALTER SYSTEM RESET recovery_min_apply_delay")
        slow.query("SELECT pg_reload_conf()")
        pg.wait_for_replay()


def test_replica_dying_after_a_read_fails_neither_commit_nor_later_reads(
    pg: PostgresTopology, shop: t.Callable[..., Flask]
) -> None:
    app = shop()
    assert app.test_client().post("/authors/lou").status_code == 200
    pg.wait_for_replay()
    select_names = sa.select(Author.name).order_by(Author.name)
    with app.app_context():
        with RoutingRecorder(db, app) as log:
            assert db.session.scalars(select_names).all() == ["lou"]
        assert log.nodes() == {(Role.REPLICA, 0)}  # round robin starts at 0
        pg.stop_node(pg.replicas[0])
        try:
            # The replica already answered this session: its next read goes
            # to the primary, never to replica[1], which is healthy but may
            # be behind what the session already saw.
            with RoutingRecorder(db, app) as log:
                assert db.session.scalars(select_names).all() == ["lou"]
            # The attempt on the dead replica[0], then the primary.
            assert log.nodes() == {(Role.REPLICA, 0), (Role.PRIMARY, 0)}
            with db.session.begin_nested():
                db.session.add(Author(name="max"))
            db.session.commit()  # the dead replica's transaction does not fail it
        finally:
            pg.start_node(pg.replicas[0])
            pg.wait_for_replay()
    with app.app_context():
        with db.session.begin():
            assert db.session.scalars(select_names).all() == ["lou", "max"]
            pg.stop_node(pg.replicas[0])
            db.session.add(Author(name="ned"))
        # "with begin()" commits without Session.commit(): same guarantee.
    pg.start_node(pg.replicas[0])
    pg.wait_for_replay()
    with app.app_context(), use_primary():
        assert db.session.scalars(select_names).all() == ["lou", "max", "ned"]


def test_threads_waiting_for_the_first_probe_share_it(
    pg: PostgresTopology, shop: t.Callable[..., Flask]
) -> None:
    app = shop(PARTITION_REPLICA_CHECK_INTERVAL=10.0)
    with app.app_context():
        cluster = db.get_router().default
    probes: list[str] = []

    def count(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        if "pg_last_wal_replay_lsn" in statement:
            probes.append(statement)

    engine = cluster.replicas[0]
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: cluster.probe(0), range(8)))
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(probes) == 1
    assert all(r is not None and r is results[0] for r in results)
