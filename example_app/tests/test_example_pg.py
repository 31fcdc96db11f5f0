"""The shop on real PostgreSQL servers: a primary with a streaming replica
for customers and the audit log, and two shard servers with a replica each.
Replay is paused on every replica, so which rows a page shows tells which
server answered.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import typing as t
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from example_app import create_app
from example_app import shop
from example_app.models import db
from example_app.tests.shop_support import copy_example
from example_app.tests.shop_support import dispose
from example_app.tests.shop_support import flask_command
from example_app.tests.shop_support import require_postgres
from flask_partition import TOKEN_HEADER
from flask_partition.routing import Role
from flask_partition.testing import PostgresNode
from flask_partition.testing import PostgresTopology
from flask_partition.testing import RoutingRecorder


@pytest.fixture(scope="module")
def shop_pg() -> t.Iterator[PostgresTopology]:
    """Databases 'app' and 'audit' on a primary with one replica; shard
    servers 'eu' and 'us' with one replica each.
    """
    require_postgres()
    with PostgresTopology(
        replicas=1, databases=["app", "audit"], shards={"eu": 1, "us": 1}
    ) as topology:
        yield topology


def every_replica(pg: PostgresTopology) -> list[PostgresNode]:
    return [*pg.replicas, *(r for s in pg.shards.values() for r in s.replicas)]


@pytest.fixture
def pg_app(shop_pg: PostgresTopology) -> t.Iterator[Flask]:
    """The shop on the topology, with fresh tables made by the CLI. Not
    called ``app``: pytest-flask would share one session between requests.
    """
    pg = shop_pg
    assert pg.primary is not None
    app = create_app(
        {
            "TESTING": True,
            "PARTITION_DATABASE_URI": pg.primary.url("app"),
            "PARTITION_REPLICAS": [r.url("app") for r in pg.replicas],
            "PARTITION_BINDS": {
                "audit": {
                    "primary": pg.primary.url("audit"),
                    "replicas": [r.url("audit") for r in pg.replicas],
                }
            },
            "PARTITION_SHARDS": {n: s.config("app") for n, s in pg.shards.items()},
        }
    )
    runner = app.test_cli_runner()
    for command in (["drop-all", "--yes"], ["create-all"], ["status"]):
        result = runner.invoke(args=["partition", *command])
        assert result.exit_code == 0, result.output
    with app.app_context():
        shop.add_demo_products()
    pg.wait_for_replay()
    yield app
    pg.resume_replay(*every_replica(pg))
    dispose(app)


def customer_id_on(pg_app: Flask, shard: str) -> int:
    with pg_app.app_context():
        return next(c for c in range(1, 100) if shop.shard_of_customer(c) == shard)


def test_shopping_with_paused_replicas(
    shop_pg: PostgresTopology, pg_app: Flask
) -> None:
    """A shopper's browser reads its own writes on the next pages (its
    consistency token sends those reads to the primaries), while another
    visitor reads the paused replicas and sees none of it.
    """
    pg = shop_pg
    assert pg.primary is not None
    browser = pg_app.test_client()  # keeps cookies: the token travels
    stranger = pg_app.test_client()
    pg.pause_replay(*every_replica(pg))

    # Sign up: written to the primaries; the replicas do not have it.
    assert browser.post("/customers", data={"name": "Ada"}).status_code == 302
    ((ada,),) = pg.primary.query("SELECT id FROM customer", database="app")
    with pg_app.app_context():
        shard = shop.shard_of_customer(ada)
    assert "Customer Ada added." in browser.get("/").get_data(as_text=True)
    assert browser.get(f"/customers/{ada}").status_code == 200
    assert "No customers yet." in stranger.get("/").get_data(as_text=True)
    assert stranger.get(f"/customers/{ada}").status_code == 404

    # The stranger's checkout form reads the replica: no Ada, stale stock.
    # The checkout itself runs on the primaries and sees both.
    pg.primary.query("UPDATE product SET stock = 1 WHERE id = 1", database="app")
    form = stranger.get("/checkout").get_data(as_text=True)
    assert "Ada" not in form and 'max="40"' in form
    refused = browser.post("/checkout", data={"customer_id": ada, "qty-1": "2"})
    assert refused.status_code == 409
    assert "Only 1 of &#39;Espresso beans, 1 kg&#39; left." in refused.get_data(
        as_text=True
    )
    with RoutingRecorder(db, pg_app) as log:
        placed = browser.post("/checkout", data={"customer_id": ada, "qty-1": "1"})
    assert placed.status_code == 302
    assert {s.role for s in log.statements} == {Role.PRIMARY}
    assert {s.cluster for s in log.statements} == {None, "audit", shard}
    order_page = placed.headers["Location"]
    order_id = uuid.UUID(order_page.rsplit("/", 1)[1])

    # The order is on its shard's primary only; the shard's replica lags.
    primary = pg.shards[shard].primary
    other = pg.shards["us" if shard == "eu" else "eu"].primary
    query = 'SELECT id FROM "order"'
    assert primary.query(query, database="app") == [(order_id,)]
    assert other.query(query, database="app") == []
    assert pg.shards[shard].replicas[0].query(query, database="app") == []

    # The redirect: the browser's token names the shard, so its primary
    # answers; the stranger asks the replica and finds nothing.
    with RoutingRecorder(db, pg_app) as log:
        page = browser.get(order_page)
    assert page.status_code == 200
    assert "Espresso beans, 1 kg" in page.get_data(as_text=True)
    # The replica was asked how far it has replayed; it is behind the
    # token, so the order and its lines came from the shard's primary.
    probes = [s for s in log.statements if "pg_last_wal_replay_lsn" in s.sql]
    reads = [s for s in log.statements if s not in probes]
    assert {(s.cluster, s.role) for s in probes} == {(shard, Role.REPLICA)}
    assert [(s.cluster, s.role) for s in reads] == [(shard, Role.PRIMARY)] * 2
    assert stranger.get(order_page).status_code == 404

    # The read-only report reads replicas: the stranger sees nothing yet.
    report = stranger.get("/api/report").get_json()
    assert (report["customers"], report["orders"], report["audit_events"]) == (0, 0, 0)

    pg.resume_replay(*every_replica(pg))
    report = stranger.get("/api/report").get_json()
    assert (report["customers"], report["orders"], report["audit_events"]) == (1, 1, 2)
    assert report["units_in_stock"] == 0 + 12 + 120 + 8
    assert {s["name"]: s["orders"] for s in report["shards"]} == {
        shard: 1,
        "us" if shard == "eu" else "eu": 0,
    }
    customer_page = stranger.get(f"/customers/{ada}").get_data(as_text=True)
    assert str(order_id)[:8] in customer_page


def test_api_clients_carry_the_token_in_a_header(
    shop_pg: PostgresTopology, pg_app: Flask
) -> None:
    pg = shop_pg
    client = pg_app.test_client(use_cookies=False)
    pg.pause_replay(*every_replica(pg))
    created = client.post("/api/customers", json={"name": "Ada"})
    assert created.status_code == 201
    token = created.headers[TOKEN_HEADER]
    assert token
    customer = created.get_json()
    body = {"customer_id": customer["id"], "items": [{"product_id": 2, "quantity": 1}]}
    placed = client.post("/api/orders", json=body, headers={TOKEN_HEADER: token})
    assert placed.status_code == 201
    token = placed.headers[TOKEN_HEADER]
    order = placed.headers["Location"]
    # With the token: the shards' primaries where the replicas lag behind.
    with_token = client.get(order, headers={TOKEN_HEADER: token})
    assert with_token.status_code == 200
    assert with_token.get_json()["shard"] == customer["shard"]
    # Without it: the paused replicas, which do not have the order yet.
    assert client.get(order).status_code == 404
    pg.resume_replay(*every_replica(pg))
    assert client.get(order).status_code == 200


def test_region_pages_read_their_shard_replica(
    shop_pg: PostgresTopology, pg_app: Flask
) -> None:
    pg = shop_pg
    client = pg_app.test_client()
    for name in ("Ada", "Grace", "Alan"):
        customer = client.post("/api/customers", json={"name": name}).get_json()
        items = [{"product_id": 3, "quantity": 1}]
        body = {"customer_id": customer["id"], "items": items}
        assert client.post("/api/orders", json=body).status_code == 201
    pg.wait_for_replay()
    eu = pg.shards["eu"]
    pg.pause_replay(*eu.replicas)
    eu.primary.query(
        'INSERT INTO "order" (id, customer_id, total_cents, created_at)'
        " VALUES (gen_random_uuid(), 5, 100, now())",
        database="app",
    )
    with RoutingRecorder(db, pg_app) as log:
        region = client.get("/api/regions/eu").get_json()
    # eu's primary has one order more than its paused replica, which answered.
    query = 'SELECT count(*) FROM "order"'
    ((on_primary,),) = eu.primary.query(query, database="app")
    assert region["orders"] == on_primary - 1
    assert log.nodes("eu") == {(Role.REPLICA, 0)} and log.nodes("us") == set()
    assert client.get("/api/regions/asia").status_code == 404


def test_dev_cluster_runs_the_shop(tmp_path: Path) -> None:
    """What the README tells a developer to do: start the dev cluster, paste
    its exports, create the tables, seed, look at the status, stop it.
    """
    require_postgres()
    env = copy_example(tmp_path)
    command = [flask_command(), "--app", "example_app", "partition", "dev-cluster"]
    server = subprocess.Popen(
        [*command, "--shard-replicas", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stderr is not None
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("# Press Ctrl-C"):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), server.stderr.read() if server.poll() else lines
        exports = {}
        for line in lines:
            if line.startswith("export "):
                name, _, value = shlex.split(line)[1].partition("=")
                exports[name] = value
        assert set(exports) == {
            "PARTITION_DATABASE_URI",
            "PARTITION_REPLICAS",
            "PARTITION_BINDS",
            "PARTITION_SHARDS",
        }
        assert list(json.loads(exports["PARTITION_BINDS"])) == ["audit"]
        assert list(json.loads(exports["PARTITION_SHARDS"])) == ["eu", "us"]
        shell_env = {**env, **exports}

        def flask(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [flask_command(), "--app", "example_app", *args],
                cwd=tmp_path,
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        created = flask("partition", "create-all")
        assert created.returncode == 0, created.stderr
        assert len(created.stdout.splitlines()) == 4  # default, audit, eu, us
        seeded = flask("seed", "--customers", "4", "--orders", "1")
        assert seeded.returncode == 0, seeded.stderr
        added = r"Added 4 products, 4 customers and 4 orders \(eu: \d, us: \d\)\."
        assert re.match(added, seeded.stdout), seeded.stdout
        status = flask("partition", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.splitlines()[-1] == "6 of 6 nodes reachable."
        shards = flask("partition", "shards", "--json")
        assert shards.returncode == 0
        rows = json.loads(shards.stdout)["shards"]
        assert rows["eu"]["rows"]["order"] + rows["us"]["rows"]["order"] == 4
        # The app itself, on the same variables.
        with pytest.MonkeyPatch.context() as patch:
            for name, value in exports.items():
                patch.setenv(name, value)
            app = create_app({"TESTING": True})
        try:
            report = app.test_client().get("/api/report").get_json()
        finally:
            dispose(app)
        assert (report["customers"], report["products"]) == (4, 4)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
        reader.join(timeout=5)
    errors = server.stderr.read()
    server.stdout.close()
    server.stderr.close()
    assert server.returncode == 0, errors
    assert errors.splitlines()[-1] == "Stopped the servers and deleted their data."
    base = lines[0].removeprefix("# Flask-Partition dev cluster in ")
    assert not os.path.exists(base)
    engine = sa.create_engine(exports["PARTITION_DATABASE_URI"])
    try:
        with pytest.raises(sa.exc.OperationalError):
            engine.connect()
    finally:
        engine.dispose()
