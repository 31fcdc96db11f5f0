"""An application written for Flask-SQLAlchemy moves to Flask-Partition by
changing one import.

The blog of :mod:`fsa_blog` and its tests below run three times: on
Flask-SQLAlchemy, on Flask-Partition after changing the import
(:func:`blog_support.partition_blog`), and on Flask-Partition with a
PostgreSQL primary and a replica whose replay is paused, configured with the
``PARTITION_*`` keys. The tests are the same for all three and expect the
same responses; they run with pytest-flask, as the application's own tests
would, so each test's requests share one application context.
"""

from __future__ import annotations

import contextlib
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.exceptions import NotFound

import fsa_blog
from blog_support import partition_blog
from blog_support import seed
from flask_partition import PartitionDB
from flask_partition.routing import Role
from flask_partition.testing import PostgresTopology
from flask_partition.testing import RoutingRecorder

BACKENDS = ["flask_sqlalchemy", "flask_partition", "flask_partition_pg"]
NOT_FOUND = {"error": NotFound.description}

BlogFactory = t.Callable[[str], Flask]


@pytest.fixture(scope="session")
def blog_pg(pg: PostgresTopology) -> PostgresTopology:
    """The PostgreSQL topology with the databases 'blog' and 'blog_audit',
    so the blog's tables never meet the other tests' ones.
    """
    assert pg.primary is not None
    for name in ("blog", "blog_audit"):
        exists = pg.primary.query(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        )
        if not exists:
            pg.primary.query(f'CREATE DATABASE "{name}"')
    pg.wait_for_replay()
    return pg


def _blog_of(app: Flask) -> t.Any:
    return fsa_blog if app.import_name == "fsa_blog" else partition_blog()


@pytest.fixture
def make_blog(
    request: pytest.FixtureRequest, tmp_path: t.Any
) -> t.Iterator[BlogFactory]:
    """Build the blog on a backend of :data:`BACKENDS`, with fresh tables and
    the rows of :func:`blog_support.seed`. On PostgreSQL the replica's replay
    is paused once the rows are there, until the test ends.
    """
    apps: list[Flask] = []
    paused: list[PostgresTopology] = []

    def factory(backend: str) -> Flask:
        blog = fsa_blog if backend == "flask_sqlalchemy" else partition_blog()
        config: dict[str, t.Any] = {"TESTING": True}
        pg: PostgresTopology | None = None
        if backend == "flask_partition_pg":
            pg = request.getfixturevalue("blog_pg")
            assert pg.primary is not None
            replica = pg.replicas[0]
            # Replicas are a Flask-Partition feature: the PARTITION_* keys,
            # and a secret to sign read-your-writes tokens with.
            config.update(
                SECRET_KEY="blog secret",
                SQLALCHEMY_DATABASE_URI=None,
                SQLALCHEMY_BINDS=None,
                PARTITION_DATABASE_URI=pg.primary.url("blog"),
                PARTITION_REPLICAS=[replica.url("blog")],
                PARTITION_BINDS={
                    "audit": {
                        "primary": pg.primary.url("blog_audit"),
                        "replicas": [replica.url("blog_audit")],
                    }
                },
            )
        else:
            folder = tmp_path / backend
            folder.mkdir()
            config.update(
                SQLALCHEMY_DATABASE_URI=f"sqlite:///{folder / 'blog.db'}",
                SQLALCHEMY_BINDS={"audit": f"sqlite:///{folder / 'audit.db'}"},
            )
        app: Flask = blog.create_app(config)
        apps.append(app)
        with app.app_context():
            blog.db.drop_all()
            blog.db.create_all()
            seed(blog)
        if pg is not None:
            pg.wait_for_replay()
            pg.pause_replay(pg.replicas[0])
            paused.append(pg)
        return app

    yield factory
    for pg in paused:
        pg.resume_replay(pg.replicas[0])
    for app in apps:
        db = _blog_of(app).db
        if isinstance(db, PartitionDB):
            engines = list(db.get_router(app).engines())
        else:
            with app.app_context():
                engines = list(db.engines.values())
        for engine in engines:
            engine.dispose()


@pytest.fixture(params=BACKENDS)
def app(request: pytest.FixtureRequest, make_blog: BlogFactory) -> Flask:
    return make_blog(request.param)


def test_the_move_is_one_import() -> None:
    blog = partition_blog()
    assert isinstance(blog.db, PartitionDB)
    assert not isinstance(fsa_blog.db, PartitionDB)
    assert blog.Post is not fsa_blog.Post


def test_tables_are_named_as_flask_sqlalchemy_names_them(app: Flask) -> None:
    db = _blog_of(app).db
    assert sorted(db.metadatas[None].tables) == [
        "comment",
        "post",
        "post_tag",
        "tag",
        "user",
    ]
    assert sorted(db.metadatas["audit"].tables) == ["audit_log"]
    assert db.metadata is db.metadatas[None]
    assert db.metadata.tables["post_tag"] is _blog_of(app).post_tag


def test_paginate_reads_page_and_per_page_from_the_request(client: FlaskClient) -> None:
    response = client.get("/posts?page=2&per_page=10")
    assert response.status_code == 200
    data = response.get_json()
    assert [post["id"] for post in data.pop("items")] == list(range(14, 4, -1))
    assert data == {
        "page": 2,
        "per_page": 10,
        "total": 24,
        "pages": 3,
        "has_prev": True,
        "prev_num": 1,
        "has_next": True,
        "next_num": 3,
        "first": 11,
        "last": 20,
        "iter_pages": [1, 2, 3],
    }
    last = client.get("/posts?page=3&per_page=10").get_json()
    assert (len(last["items"]), last["has_next"], last["next_num"]) == (4, False, None)
    assert len(client.get("/posts?per_page=500").get_json()["items"]) == 24  # max 50
    first = client.get("/posts?per_page=1&page=12").get_json()
    assert first["iter_pages"] == [1, 2, None, 10, 11, 12, 13, 14, 15, 16, None, 23, 24]
    for bad in ("page=9&per_page=10", "page=0", "page=x", "per_page=-1"):
        response = client.get(f"/posts?{bad}")
        assert (response.status_code, response.get_json()) == (404, NOT_FOUND), bad


def test_or_404_helpers_and_their_descriptions(client: FlaskClient) -> None:
    assert client.get("/posts/1").get_json() == {
        "id": 1,
        "title": "Hello World",
        "slug": "hello-world",
        "author": "ann",
        "tags": ["flask", "intro"],
        "comments": 3,
    }
    response = client.get("/posts/99")
    assert (response.status_code, response.get_json()) == (
        404,
        {"error": "No post 99."},
    )
    assert client.get("/users/ann/latest").get_json()["title"] == "Second Post"
    response = client.get("/users/zed/latest")
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)
    response = client.get("/users/zed")
    assert response.status_code == 404
    assert response.get_json() == {"error": "No user named 'zed'."}


def test_create_post_runs_session_events_on_both_databases(
    client: FlaskClient,
) -> None:
    response = client.post(
        "/posts",
        json={
            "author": "ann",
            "title": "New: Flask & Partition!",
            "tags": ["new", "flask"],
        },
    )
    assert response.status_code == 201
    created = {
        "id": 25,
        "title": "New: Flask & Partition!",
        "slug": "new-flask-partition",  # set by the before_flush listener
        "author": "ann",
        "tags": ["flask", "new"],
        "comments": 0,
    }
    assert response.get_json() == created
    assert client.get("/posts/25").get_json() == created
    stats = client.get("/stats").get_json()
    assert (stats["posts"], stats["empty"], len(stats["audit"])) == (25, 2, 25)
    assert stats["audit"][:2] == ["Hello World", "Second Post"]
    assert stats["audit"][-1] == "New: Flask & Partition!"
    assert client.get("/tags/new").get_json() == {
        "name": "new",
        "posts": ["New: Flask & Partition!"],
    }
    response = client.post("/posts", json={"author": "zed", "title": "x"})
    assert (response.status_code, response.get_json()) == (
        404,
        {"error": "No user named 'zed'."},
    )


def test_write_only_and_dynamic_relationships(client: FlaskClient) -> None:
    assert client.get("/users/ann").get_json() == {
        "username": "ann",
        "posts": ["Hello World", "Second Post"],
    }
    comments = client.get("/posts/1/comments?page=2").get_json()
    assert (comments["items"], comments["total"], comments["pages"]) == (["c"], 3, 2)
    assert client.post("/posts/1/comments", json={"body": "d"}).status_code == 201
    comments = client.get("/posts/1/comments?page=2").get_json()
    assert (comments["items"], comments["total"]) == (["c", "d"], 4)
    response = client.get("/posts/1/comments?page=3")
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


def test_legacy_model_query(client: FlaskClient) -> None:
    users = client.get("/users?per_page=1").get_json()
    assert (users["items"], users["total"], users["next_num"]) == (["ann"], 2, 2)
    assert client.get("/tags/flask").get_json() == {
        "name": "flask",
        "posts": ["Hello World", "Second Post"],
    }
    response = client.get("/tags/nope")
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


def test_delete_cascades(client: FlaskClient) -> None:
    assert client.post("/posts/1/delete").get_json() == {"deleted": 1}
    assert client.get("/posts/1").status_code == 404
    assert client.get("/tags/flask").get_json()["posts"] == ["Second Post"]
    assert client.get("/stats").get_json()["posts"] == 23


def test_cli_commands(app: Flask, client: FlaskClient) -> None:
    db = _blog_of(app).db
    runner = app.test_cli_runner()
    result = runner.invoke(args=["seed", "3"])
    assert (result.exit_code, result.output) == (0, "Added 3 posts.\n")
    assert client.get("/users/seed").get_json()["posts"] == [
        "Seed 1",
        "Seed 2",
        "Seed 3",
    ]
    db.session.remove()  # end the read transaction, which DROP TABLE would wait for
    db.drop_all()
    assert sa.inspect(db.engine).get_table_names() == []
    result = runner.invoke(args=["init-db"])
    assert (result.exit_code, result.output) == (0, "Initialized the database.\n")
    assert sorted(sa.inspect(db.engine).get_table_names()) == [
        "comment",
        "post",
        "post_tag",
        "tag",
        "user",
    ]
    assert sa.inspect(db.engines["audit"]).get_table_names() == ["audit_log"]


#: Requests of the application's life, for the comparison below.
SCRIPT: list[tuple[str, str, dict[str, t.Any] | None]] = [
    ("GET", "/posts", None),
    ("GET", "/posts?page=3&per_page=7", None),
    ("GET", "/posts/3", None),
    ("GET", "/users", None),
    ("GET", "/users/bob", None),
    ("GET", "/users/ann/latest", None),
    ("GET", "/tags/intro", None),
    ("GET", "/posts/1/comments", None),
    ("POST", "/posts", {"author": "bob", "title": "Bob again", "tags": ["intro"]}),
    ("POST", "/posts/25/comments", {"body": "first"}),
    ("POST", "/posts/2/delete", None),
    ("GET", "/posts?per_page=5", None),
    ("GET", "/tags/intro", None),
    ("GET", "/tags/flask", None),
    ("GET", "/stats", None),
    ("GET", "/posts/2", None),
    ("GET", "/posts?page=99", None),
]


def _transcript(app: Flask, *, shared_context: bool) -> list[tuple[int, t.Any]]:
    """Run :data:`SCRIPT` with one client, in one application context (as
    under pytest-flask) or in a new one for each request (as in production,
    where read-your-writes across requests rests on the consistency token
    the client carries).
    """
    with contextlib.ExitStack() as stack:
        if shared_context:
            stack.enter_context(app.test_request_context())
        client = app.test_client()
        return [
            (response.status_code, response.get_json())
            for response in (
                client.open(url, method=method, json=body)
                for method, url, body in SCRIPT
            )
        ]


@pytest.mark.parametrize("shared_context", [True, False])
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_responses_are_identical_to_flask_sqlalchemy(
    make_blog: BlogFactory, backend: str, shared_context: bool
) -> None:
    expected = _transcript(make_blog("flask_sqlalchemy"), shared_context=shared_context)
    assert [status for status, _ in expected].count(404) == 2
    moved = _transcript(make_blog(backend), shared_context=shared_context)
    assert moved == expected


def test_paused_replica_serves_reads_until_the_client_writes(
    make_blog: BlogFactory, blog_pg: PostgresTopology
) -> None:
    app = make_blog("flask_partition_pg")
    db = partition_blog().db
    assert blog_pg.primary is not None
    blog_pg.primary.query(
        "INSERT INTO post (author_id, title, slug, body) VALUES (2, 'Behind', '', '')",
        database="blog",
    )
    with app.test_request_context():
        client = app.test_client()
        with RoutingRecorder(db, app) as log:
            assert client.get("/posts").get_json()["total"] == 24  # replica: no row 25
        assert set(log.roles()) == {Role.REPLICA}
        log.clear()
        with RoutingRecorder(db, app) as log:
            assert (
                client.post("/posts/1/comments", json={"body": "x"}).status_code == 201
            )
            assert client.get("/posts").get_json()["total"] == 25  # the primary now
        assert log.roles()[0] is Role.REPLICA  # get_or_404 read the replica
        assert log.roles()[-2:] == [Role.PRIMARY, Role.PRIMARY]
    # A new session: this client's consistency token sends it to the primary,
    # since the replica has not replayed the write; another client without a
    # token reads the replica.
    assert client.get("/posts").get_json()["total"] == 25
    assert app.test_client().get("/posts").get_json()["total"] == 24
