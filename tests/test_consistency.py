"""Consistency tokens, replica settings and observability on SQLite: the
config checks, time tokens, the token codec, the log, the signal and the
debug header. The PostgreSQL behaviour is in test_consistency_pg.py.
"""

from __future__ import annotations

import logging
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_partition import ReadOnlyError
from flask_partition import ROUTE_HEADER
from flask_partition import routed
from flask_partition import TOKEN_HEADER
from flask_partition import use_replica
from flask_partition.config import ConsistencySettings
from flask_partition.config import parse_config
from flask_partition.consistency import TokenCodec
from flask_partition.replicas import parse_lsn
from flask_partition.routing import Role
from flask_partition.testing import RoutingRecorder
from partition_models import AppFactory
from partition_models import Author
from partition_models import author_views
from partition_models import db

BASE = {"PARTITION_DATABASE_URI": "sqlite://"}


def _error(exc: type[Exception], **config: t.Any) -> str:
    with pytest.raises(exc) as info:
        parse_config({**BASE, **config})
    return str(info.value)


def test_config_errors_name_the_key() -> None:
    assert _error(ValueError, PARTITION_CONSISTENCY="strong") == (
        "'PARTITION_CONSISTENCY' must be one of 'auto', 'lsn', 'time', 'off',"
        " got 'strong'."
    )
    assert _error(TypeError, PARTITION_REPLICA_COOLDOWN="5") == (
        "'PARTITION_REPLICA_COOLDOWN' must be a number of seconds, got '5'."
    )
    assert _error(ValueError, PARTITION_REPLICA_CHECK_INTERVAL=-1) == (
        "'PARTITION_REPLICA_CHECK_INTERVAL' must be a finite number of seconds"
        " >= 0, got -1."
    )
    assert _error(TypeError, PARTITION_REPLICA_MAX_LAG=True) == (
        "'PARTITION_REPLICA_MAX_LAG' must be a number of seconds, got True."
    )
    assert _error(ValueError, PARTITION_REPLICA_MAX_LAG_BYTES=-5) == (
        "'PARTITION_REPLICA_MAX_LAG_BYTES' must be a number of bytes >= 0, got -5."
    )
    assert _error(ValueError, PARTITION_TOKEN_MAX_AGE=0.5) == (
        "'PARTITION_TOKEN_MAX_AGE' must be at least 1 second, got 0.5."
    )
    assert _error(TypeError, PARTITION_REPLICA_MAX_LAG_BYTES="1MB") == (
        "'PARTITION_REPLICA_MAX_LAG_BYTES' must be a number of bytes, got '1MB'."
    )
    assert _error(TypeError, PARTITION_TOKEN_COOKIE=1) == (
        "'PARTITION_TOKEN_COOKIE' must be a cookie name or None, got 1."
    )
    assert _error(TypeError, SECRET_KEY="new", SECRET_KEY_FALLBACKS="old") == (
        "'SECRET_KEY_FALLBACKS' must be a list of old secret keys, got a str."
    )
    assert _error(ValueError, PARTITION_TOKEN_SECRET="") == (
        "'PARTITION_TOKEN_SECRET' is empty; consistency tokens need a secret."
    )
    assert _error(ValueError, PARTITION_TOKEN_COOKIE="my token") == (
        "'PARTITION_TOKEN_COOKIE' must be a cookie name (letters, digits and"
        " !#$%&'*+.^_`|~-) or None for the header only, got 'my token'."
    )
    assert _error(TypeError, PARTITION_DEBUG_HEADER="yes") == (
        "'PARTITION_DEBUG_HEADER' must be True or False, got 'yes'."
    )
    assert _error(TypeError, SECRET_KEY=12345) == (
        "'SECRET_KEY' must be a string or bytes to sign consistency tokens, got a int."
    )
    # With tokens off, the keys are left to Flask.
    parse_config({**BASE, "SECRET_KEY": 12345, "PARTITION_CONSISTENCY": "off"})


def test_defaults_and_the_secret_never_shows() -> None:
    topology = parse_config({**BASE, "SECRET_KEY": "hunter2-secret"})
    assert topology.consistency.mode == "auto"
    assert topology.consistency.cookie == "partition"
    assert topology.consistency.max_age == 300.0
    assert topology.replica_settings.cooldown == 5.0
    assert topology.replica_settings.check_interval == 0.5
    assert topology.replica_settings.max_lag is None
    assert topology.debug_header is False
    assert topology.consistency.secret_keys == ("hunter2-secret",)
    assert "hunter2" not in repr(topology)
    rotated = parse_config(
        {**BASE, "SECRET_KEY": "new", "SECRET_KEY_FALLBACKS": ["old"]}
    )
    assert rotated.consistency.secret_keys == ("old", "new")
    own = parse_config({**BASE, "SECRET_KEY": "app", "PARTITION_TOKEN_SECRET": "t"})
    assert own.consistency.secret_keys == ("t",)


def test_tokens_need_a_secret(make_app: AppFactory) -> None:
    # SQLite replicas are the primary's file: 'auto' gives them no tokens and
    # so needs no secret; 'time' does.
    make_app(SECRET_KEY=None)
    with pytest.raises(RuntimeError) as info:
        make_app(PARTITION_CONSISTENCY="time", SECRET_KEY=None)
    assert str(info.value) == (
        "Consistency tokens must be signed, but neither 'SECRET_KEY' nor"
        " 'PARTITION_TOKEN_SECRET' is set. Set one of them, or set"
        " 'PARTITION_CONSISTENCY' to 'off' to give up read-your-writes across"
        " requests."
    )


def test_lsn_mode_and_lag_limits_need_postgresql(make_app: AppFactory) -> None:
    with pytest.raises(ValueError) as info:
        make_app(PARTITION_CONSISTENCY="lsn", SECRET_KEY="s")
    assert str(info.value) == (
        "'PARTITION_CONSISTENCY' is 'lsn', but the default cluster uses 'sqlite';"
        " LSN tokens need PostgreSQL. Use 'auto' (time tokens for other"
        " databases) or 'time'."
    )
    with pytest.raises(ValueError) as info:
        make_app(
            PARTITION_REPLICA_MAX_LAG=2,
            PARTITION_BINDS={
                "legacy": {
                    "primary": "sqlite:///legacy.db",
                    "replicas": ["mysql://app:pw@r1/legacy"],
                }
            },
        )
    assert str(info.value) == (
        "'PARTITION_REPLICA_MAX_LAG' is set, but a replica of bind 'legacy' uses"
        " 'mysql', whose lag cannot be measured; lag limits need PostgreSQL"
        " replicas. Remove the limit."
    )
    # SQLite replicas never lag: a limit is accepted and they keep reads.
    make_app(PARTITION_REPLICA_MAX_LAG=2)


def test_time_tokens_read_the_primary_within_the_window(make_app: AppFactory) -> None:
    app = author_views(
        make_app(
            PARTITION_CONSISTENCY="time",
            PARTITION_CONSISTENCY_WINDOW=60.0,
            PARTITION_DEBUG_HEADER=True,
            SECRET_KEY="s",
        )
    )
    writer = app.test_client()
    response = writer.post("/authors/ann")
    token = response.headers[TOKEN_HEADER]
    cookie = writer.get_cookie("partition")
    assert cookie is not None and cookie.value == token and cookie.http_only
    assert writer.get("/authors").headers[ROUTE_HEADER] == "default/primary x1"
    # The token is unchanged, so it is not sent again.
    assert TOKEN_HEADER not in writer.get("/authors").headers
    other = app.test_client().get("/authors")
    assert other.headers[ROUTE_HEADER] == "default/replica[0] x1"
    assert other.json == {"names": ["ann"]}  # SQLite: the replica is the file


def test_time_token_past_its_window_is_dropped(make_app: AppFactory) -> None:
    app = author_views(
        make_app(
            PARTITION_CONSISTENCY="time",
            PARTITION_CONSISTENCY_WINDOW=0.0,
            PARTITION_DEBUG_HEADER=True,
            SECRET_KEY="s",
        )
    )
    client = app.test_client()
    # Past the window at once: the write's own response carries no token.
    response = client.post("/authors/bo")
    assert TOKEN_HEADER not in response.headers
    assert client.get_cookie("partition") is None


def test_header_only_when_the_cookie_is_off(make_app: AppFactory) -> None:
    app = author_views(
        make_app(
            PARTITION_CONSISTENCY="time",
            PARTITION_TOKEN_COOKIE=None,
            PARTITION_DEBUG_HEADER=True,
            SECRET_KEY="s",
        )
    )
    client = app.test_client()
    token = client.post("/authors/cy").headers[TOKEN_HEADER]
    assert client.get_cookie("partition") is None
    assert client.get("/authors").headers[ROUTE_HEADER] == "default/replica[0] x1"
    routed_with_token = client.get("/authors", headers={TOKEN_HEADER: token})
    assert routed_with_token.headers[ROUTE_HEADER] == "default/primary x1"


def test_sqlite_auto_mode_issues_no_token(make_app: AppFactory) -> None:
    app = author_views(make_app())
    response = app.test_client().post("/authors/di")
    assert response.status_code == 200
    assert TOKEN_HEADER not in response.headers
    assert "Set-Cookie" not in response.headers
    assert ROUTE_HEADER not in response.headers  # the debug header is opt-in


def test_codec_rejects_expired_altered_and_foreign_tokens() -> None:
    settings = ConsistencySettings(secret_keys=("k1",), max_age=10)
    codec = TokenCodec(settings)
    token = codec.dumps({None: 123, "eu": 4.5})
    now = time.time()
    assert codec.loads(token, now) == {None: 123, "eu": 4.5}
    # From the cache and from a fresh codec alike, once too old: None.
    assert codec.loads(token, now + 11) is None
    assert TokenCodec(settings).loads(token, now + 11) is None
    assert codec.loads(token[:-2], now) is None
    assert codec.loads("", now) is None
    assert codec.loads(None, now) is None
    assert codec.loads("x" * 5000, now) is None
    assert (
        TokenCodec(ConsistencySettings(secret_keys=("k2",))).loads(token, now) is None
    )
    # Key rotation: the old key still verifies while it is a fallback.
    rotated = TokenCodec(ConsistencySettings(secret_keys=("k1", "k2")))
    assert rotated.loads(token, now) == {None: 123, "eu": 4.5}
    # Signed, but not a token's shape.
    for payload in ({"a": 1}, [[1, 2]], [["eu", -1]], [["eu", True]], [["eu"]]):
        text = codec._serializer.dumps(payload)
        assert codec.loads(text, now) is None, payload


def test_parse_lsn() -> None:
    assert parse_lsn("0/3000148") == 0x3000148
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    with pytest.raises(ValueError):
        parse_lsn("nonsense")


def test_routing_decisions_are_logged_and_signalled(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(
        PARTITION_DATABASE_URI="sqlite:///app.db",
        PARTITION_REPLICAS=["sqlite:///app.db"],
    )
    received: list[dict[str, t.Any]] = []

    def on_routed(sender: Flask, **info: t.Any) -> None:
        assert sender is app
        received.append(info)

    caplog.set_level(logging.DEBUG, logger="flask_partition")
    with routed.connected_to(on_routed, app), app.app_context():
        db.session.add(Author(name="eve"))
        db.session.commit()
        db.session.scalars(sa.select(Author)).all()
    with app.app_context():
        db.session.scalars(sa.select(Author)).all()  # no receiver now
    # The flush asks for its connection twice (SQLAlchemy's unit of work).
    assert [(i["cluster"], i["role"], i["node"], i["reason"]) for i in received] == [
        (None, Role.PRIMARY, "primary", "write"),
        (None, Role.PRIMARY, "primary", "write"),
        (None, Role.PRIMARY, "primary", "written by this session"),
    ]
    lines = [r.getMessage() for r in caplog.records if r.name == "flask_partition"]
    assert lines == [
        "the default cluster: primary (write)",
        "the default cluster: primary (write)",
        "the default cluster: primary (written by this session)",
        "the default cluster: replica[0] (replica)",
    ]


def test_token_of_clusters_no_longer_configured_is_cleared(
    make_app: AppFactory,
) -> None:
    app = author_views(make_app(PARTITION_CONSISTENCY="time", SECRET_KEY="s"))
    codec = db.get_state(app).tokens
    assert codec is not None
    token = codec.dumps({"gone": time.time()})
    client = app.test_client()
    client.set_cookie("partition", token)
    response = client.get("/authors")
    assert response.status_code == 200
    assert response.headers[TOKEN_HEADER] == ""
    assert client.get_cookie("partition") is None


def test_raw_sql_under_use_replica_never_reaches_a_primary(
    make_app: AppFactory,
) -> None:
    app = make_app(
        PARTITION_CONSISTENCY="time", PARTITION_CONSISTENCY_WINDOW=60.0, SECRET_KEY="s"
    )

    @app.get("/raw")
    @use_replica
    def raw() -> dict[str, int]:
        return {
            "count": db.session.execute(
                sa.text("SELECT count(*) FROM author")
            ).scalar_one()
        }

    codec = db.get_state(app).tokens
    assert codec is not None
    token = codec.dumps({None: time.time()})
    # The token would send reads to the primary; raw SQL under use_replica
    # ignores it and stays on the replica the user accepted.
    client = app.test_client(use_cookies=False)
    with RoutingRecorder(db, app) as log:
        assert client.get("/raw", headers={TOKEN_HEADER: token}).json == {"count": 0}
    assert log.roles() == [Role.REPLICA]
    # With no usable replica, it is refused instead of sent to the primary.
    with app.app_context():
        cluster = db.get_router().default
        cluster.mark_down(0, "test")
        with use_replica(), pytest.raises(ReadOnlyError) as info:
            db.session.execute(sa.text("DELETE FROM author"))
    assert str(info.value) == (
        "Cannot run raw SQL on the default cluster inside 'use_replica': no"
        " usable replica (replica[0] down), and the primary would accept a"
        " write. Nothing was sent to the database. Use"
        " select() constructs, or run it outside the block."
    )


def test_a_raising_receiver_changes_no_routing(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = author_views(make_app())

    def broken(sender: Flask, **info: t.Any) -> None:
        raise RuntimeError("receiver bug")

    with routed.connected_to(broken, app):
        response = app.test_client().get("/authors")
    assert response.status_code == 200 and response.json == {"names": []}
    assert "a 'routed' receiver raised" in caplog.text
