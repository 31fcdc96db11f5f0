from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app.models import Customer
from example_app.models import db
from flask_partition import ReadOnlyError
from flask_partition import use_replica
from flask_partition.routing import Role
from flask_partition.testing import RoutingRecorder

Rows = t.Callable[[str, str], list[tuple[t.Any, ...]]]
AddCustomers = t.Callable[..., list[int]]


def test_index_lists_customers_from_the_replica(
    app: Flask, client: FlaskClient, add_customers: AddCustomers
) -> None:
    assert b"No customers yet." in client.get("/").data
    add_customers("Ada <script>", "Grace")
    with RoutingRecorder(db, app) as log:
        response = client.get("/")
    assert response.status_code == 200
    assert b"Ada &lt;script&gt;" in response.data
    assert b"Grace" in response.data
    assert log.roles() == [Role.REPLICA]


def test_create_customer_writes_each_database(
    app: Flask, client: FlaskClient, rows: Rows
) -> None:
    with RoutingRecorder(db, app) as log:
        response = client.post("/customers", data={"name": "Ada"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert set(log.roles(None)) == {Role.PRIMARY}
    assert set(log.roles("audit")) == {Role.PRIMARY}
    assert rows("shop", "SELECT id, name, visits FROM customer") == [(1, "Ada", 0)]
    assert rows("audit", "SELECT customer_id, action FROM audit_event") == [
        (1, "created")
    ]
    # Each table lives only in its own database.
    assert rows("shop", "SELECT name FROM sqlite_master") == [("customer",)]
    assert rows("audit", "SELECT name FROM sqlite_master") == [("audit_event",)]
    assert b"Ada" in client.get("/").data


def test_create_customer_requires_a_name(client: FlaskClient, rows: Rows) -> None:
    response = client.post("/customers", data={"name": "  "})
    assert response.status_code == 400
    assert b"The form field &#39;name&#39; is required." in response.data
    assert rows("shop", "SELECT * FROM customer") == []
    assert rows("audit", "SELECT * FROM audit_event") == []


def test_customer_page(client: FlaskClient, add_customers: AddCustomers) -> None:
    (ada,) = add_customers("Ada & co")
    response = client.get(f"/customers/{ada}")
    assert response.status_code == 200
    assert b"<h1>Ada &amp; co</h1>" in response.data
    assert client.get(f"/customers/{ada + 1}").status_code == 404


def test_visit_increments_on_the_primary(
    app: Flask, client: FlaskClient, add_customers: AddCustomers, rows: Rows
) -> None:
    (ada,) = add_customers("Ada")
    with RoutingRecorder(db, app) as log:
        assert client.post(f"/customers/{ada}/visit").json == {"id": ada, "visits": 1}
        assert client.post(f"/customers/{ada}/visit").json == {"id": ada, "visits": 2}
    assert set(log.roles()) == {Role.PRIMARY}
    assert rows("shop", "SELECT visits FROM customer") == [(2,)]
    assert client.post(f"/customers/{ada + 1}/visit").status_code == 404


def test_report_counts_on_the_replica(
    app: Flask, client: FlaskClient, add_customers: AddCustomers
) -> None:
    add_customers("Ada", "Grace")
    with RoutingRecorder(db, app) as log:
        response = client.get("/report")
    assert response.json == {"customers": 2, "audit_events": 0}
    assert log.roles() == [Role.REPLICA]


def test_use_replica_refuses_writes(app: Flask, rows: Rows) -> None:
    with app.app_context():
        with use_replica(), pytest.raises(ReadOnlyError) as info:
            db.session.add(Customer(name="Ada"))
            db.session.flush()
        db.session.rollback()
    assert str(info.value) == (
        "Cannot flush 1 new, 0 changed and 0 deleted objects inside"
        " 'use_replica': it only allows reads. Nothing was sent to the database."
        " Move the write out of the block or use 'use_primary'."
    )
    assert rows("shop", "SELECT * FROM customer") == []


def test_use_replica_view_refuses_writes(
    app: Flask, client: FlaskClient, rows: Rows
) -> None:
    @app.post("/write-in-report")
    @use_replica
    def write_in_report() -> str:
        db.session.add(Customer(name="Ada"))
        db.session.commit()
        return "written"

    with pytest.raises(ReadOnlyError):
        client.post("/write-in-report")
    assert rows("shop", "SELECT * FROM customer") == []


def test_api_customers_paginates(
    client: FlaskClient, add_customers: AddCustomers
) -> None:
    ada, grace, linus = add_customers("Ada", "Grace", "Linus")
    first = client.get("/api/customers?per_page=2").json
    assert first == {
        "items": [
            {"id": ada, "name": "Ada", "visits": 0},
            {"id": grace, "name": "Grace", "visits": 0},
        ],
        "page": 1,
        "pages": 2,
        "total": 3,
    }
    second = client.get("/api/customers?per_page=2&page=2").json
    assert second is not None
    assert second["items"] == [{"id": linus, "name": "Linus", "visits": 0}]
    assert second["page"] == 2
    assert client.get("/api/customers?per_page=2&page=3").status_code == 404


def test_api_customers_empty(client: FlaskClient) -> None:
    assert client.get("/api/customers").json == {
        "items": [],
        "page": 1,
        "pages": 0,
        "total": 0,
    }


def test_customer_api_get_and_delete(
    app: Flask, client: FlaskClient, add_customers: AddCustomers, rows: Rows
) -> None:
    (ada,) = add_customers("Ada")
    with RoutingRecorder(db, app) as log:
        response = client.get(f"/api/customers/{ada}")
    assert response.json == {"id": ada, "name": "Ada", "visits": 0}
    assert log.roles() == [Role.REPLICA]

    with RoutingRecorder(db, app) as log:
        response = client.delete(f"/api/customers/{ada}")
    assert response.status_code == 204
    assert set(log.roles()) == {Role.PRIMARY}
    assert rows("shop", "SELECT * FROM customer") == []
    assert rows("audit", "SELECT customer_id, action FROM audit_event") == [
        (ada, "deleted")
    ]
    assert client.get(f"/api/customers/{ada}").status_code == 404
    assert client.delete(f"/api/customers/{ada}").status_code == 404


def test_async_health(client: FlaskClient, add_customers: AddCustomers) -> None:
    assert client.get("/api/health").json == {"status": "ok", "customers": 0}
    add_customers("Ada")
    assert client.get("/api/health").json == {"status": "ok", "customers": 1}
