"""Every route of the shop's JSON API, and where its statements go."""

from __future__ import annotations

import typing as t
import uuid

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app import api
from example_app import shop
from example_app.models import AuditEvent
from example_app.models import db
from example_app.tests.conftest import AddCustomer
from example_app.tests.conftest import PlaceOrder
from example_app.tests.conftest import Rows
from flask_partition import ReadOnlyError
from flask_partition.routing import Role
from flask_partition.testing import RoutingRecorder

BAD_CUSTOMER = "'name' must be a string, 'email' a string or null."
BAD_ORDER = "Send 'customer_id' and a list of 'items'."
PRIMARY = (Role.PRIMARY, 0)
REPLICA = (Role.REPLICA, 0)


def json_of(response: t.Any) -> t.Any:
    assert response.mimetype == "application/json", response.data
    return response.get_json()


def test_list_customers_paginates(
    client: FlaskClient, add_customer: AddCustomer
) -> None:
    ada = add_customer("Ada", "ada@example.com", shard="eu")
    grace = add_customer("Grace", shard="us")
    linus = add_customer("Linus", shard="eu")
    first = json_of(client.get("/api/customers?per_page=2"))
    ids = sorted([ada, grace, linus])
    assert [c["id"] for c in first["items"]] == ids[:2]
    assert (first["page"], first["pages"], first["total"]) == (1, 2, 3)
    by_id = {c["id"]: c for c in first["items"]}
    if ada in by_id:
        assert by_id[ada] == {
            "id": ada,
            "name": "Ada",
            "email": "ada@example.com",
            "shard": "eu",
        }
    second = json_of(client.get("/api/customers?per_page=2&page=2"))
    assert [c["id"] for c in second["items"]] == ids[2:]
    response = client.get("/api/customers?per_page=2&page=3")
    assert response.status_code == 404
    assert json_of(response) == {
        "error": "The requested URL was not found on the server. If you entered"
        " the URL manually please check your spelling and try again."
    }


def test_list_customers_empty(client: FlaskClient) -> None:
    assert json_of(client.get("/api/customers")) == {
        "items": [],
        "page": 1,
        "pages": 0,
        "total": 0,
    }


def test_create_customer(app: Flask, client: FlaskClient, rows: Rows) -> None:
    with RoutingRecorder(db, app) as log:
        response = client.post(
            "/api/customers", json={"name": " Ada ", "email": "ada@example.com"}
        )
    assert response.status_code == 201
    body = json_of(response)
    assert body["id"] == 1 and body["name"] == "Ada"
    assert body["shard"] == shop.shard_of_customer(1)
    assert response.headers["Location"] == "/api/customers/1"
    assert log.nodes(None) == log.nodes("audit") == {PRIMARY}
    assert rows("audit", "SELECT action, customer_id FROM audit_event") == [
        ("customer.created", 1)
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "Send a JSON object."),
        ([1, 2], "Send a JSON object."),
        (
            {"email": "x@example.com"},
            "'name' must be a string, 'email' a string or null.",
        ),
        (
            {"name": "Ada", "email": 5},
            "'name' must be a string, 'email' a string or null.",
        ),
        ({"name": "   "}, "A customer needs a name."),
    ],
)
def test_create_customer_refusals(
    client: FlaskClient, rows: Rows, body: t.Any, message: str
) -> None:
    if isinstance(body, str):
        response = client.post("/api/customers", data=body)
    else:
        response = client.post("/api/customers", json=body)
    assert response.status_code == 400
    assert json_of(response) == {"error": message}
    assert rows("shop", "SELECT * FROM customer") == []


def test_customer_get_reads_the_replica(
    app: Flask, client: FlaskClient, add_customer: AddCustomer
) -> None:
    ada = add_customer("Ada", shard="us")
    with RoutingRecorder(db, app) as log:
        body = json_of(client.get(f"/api/customers/{ada}"))
    assert body == {"id": ada, "name": "Ada", "email": None, "shard": "us"}
    assert log.roles() == [Role.REPLICA]
    response = client.get(f"/api/customers/{ada + 100}")
    assert response.status_code == 404
    assert json_of(response) == {"error": f"No customer {ada + 100}."}


def test_customer_delete_on_the_primaries_and_one_shard(
    app: Flask,
    client: FlaskClient,
    add_customer: AddCustomer,
    place_order: PlaceOrder,
    rows: Rows,
) -> None:
    ada = add_customer("Ada", shard="eu")
    other = add_customer("Other", shard="eu")
    place_order(ada, {1: 1, 2: 1})
    place_order(ada, {3: 1})
    kept = place_order(other)
    with RoutingRecorder(db, app) as log:
        response = client.delete(f"/api/customers/{ada}")
    assert response.status_code == 204
    # MethodView with @use_primary on delete: every statement on primaries.
    assert {s.role for s in log.statements} == {Role.PRIMARY}
    assert log.nodes("us") == set()  # the key sends the DELETEs to eu only
    assert rows("shop", "SELECT id FROM customer") == [(other,)]
    assert rows("orders-eu", "SELECT id FROM 'order'") == [(kept.hex,)]
    assert rows("orders-eu", "SELECT DISTINCT customer_id FROM order_line") == [
        (other,)
    ]
    deleted = (
        "SELECT customer_id, detail FROM audit_event WHERE action = 'customer.deleted'"
    )
    assert rows("audit", deleted) == [(ada, "2 orders")]
    assert client.get(f"/api/customers/{ada}").status_code == 404
    assert client.delete(f"/api/customers/{ada}").status_code == 404


def test_products(app: Flask, client: FlaskClient) -> None:
    with RoutingRecorder(db, app) as log:
        body = json_of(client.get("/api/products"))
    assert body["items"][0] == {
        "id": 1,
        "name": "Espresso beans, 1 kg",
        "price_cents": 2400,
        "stock": 40,
    }
    assert [p["name"] for p in body["items"]] == [p[0] for p in shop.DEMO_PRODUCTS]
    assert log.roles() == [Role.REPLICA]


def test_orders_of_a_customer_read_one_shard(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, place_order: PlaceOrder
) -> None:
    ada = add_customer("Ada", shard="us")
    grace = add_customer("Grace", shard="eu")
    first = place_order(ada, {1: 1})
    second = place_order(ada, {2: 2, 3: 1})
    place_order(grace)
    with RoutingRecorder(db, app) as log:
        body = json_of(client.get(f"/api/orders?customer_id={ada}"))
    assert [o["id"] for o in body["items"]] == [str(second), str(first)]
    assert body["items"][0]["lines"] == [
        {
            "product_id": 3,
            "product_name": "Ceramic cup",
            "quantity": 1,
            "price_cents": 900,
        },
        {
            "product_id": 2,
            "product_name": "Milk frother",
            "quantity": 2,
            "price_cents": 3900,
        },
    ]
    assert body["items"][0]["total_cents"] == 2 * 3900 + 900
    assert body["items"][0]["shard"] == "us"
    assert log.nodes("us") == {REPLICA} and log.nodes("eu") == set()


def test_latest_orders_merge_every_shard(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, place_order: PlaceOrder
) -> None:
    ada = add_customer("Ada", shard="us")
    grace = add_customer("Grace", shard="eu")
    placed = [place_order(ada), place_order(grace), place_order(ada)]
    with RoutingRecorder(db, app) as log:
        body = json_of(client.get("/api/orders?limit=2"))
    # Newest first across both shards, limited after the merge.
    assert [o["id"] for o in body["items"]] == [str(placed[2]), str(placed[1])]
    assert [o["shard"] for o in body["items"]] == ["us", "eu"]
    assert log.nodes("us") == log.nodes("eu") == {REPLICA}
    # A negative or huge limit is clamped, never passed to the database.
    assert len(json_of(client.get("/api/orders?limit=-1"))["items"]) == 1
    assert len(json_of(client.get("/api/orders?limit=100000"))["items"]) == 3


def test_place_order(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, rows: Rows
) -> None:
    ada = add_customer("Ada", shard="eu")
    items = [
        {"product_id": 4, "quantity": 1},
        {"product_id": 3, "quantity": 2},
        {"product_id": 4, "quantity": 1},
    ]
    with RoutingRecorder(db, app) as log:
        response = client.post("/api/orders", json={"customer_id": ada, "items": items})
    assert response.status_code == 201
    body = json_of(response)
    assert body["shard"] == "eu" and body["customer_id"] == ada
    assert body["total_cents"] == 2 * 5500 + 2 * 900
    assert [(line["product_id"], line["quantity"]) for line in body["lines"]] == [
        (3, 2),
        (4, 2),
    ]
    assert response.headers["Location"] == f"/api/orders/{body['id']}"
    # @use_primary on post only.
    assert {s.role for s in log.statements} == {Role.PRIMARY}
    assert rows("shop", "SELECT stock FROM product WHERE id = 4") == [(6,)]
    assert rows("orders-eu", "SELECT count(*) FROM order_line") == [(2,)]
    assert rows("orders-us", "SELECT count(*) FROM order_line") == [(0,)]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"items": []}, 400, BAD_ORDER),
        ({"customer_id": 1, "items": {}}, 400, BAD_ORDER),
        ({"customer_id": 1, "items": [{"product_id": 1}]}, 400,
         "Each item needs 'product_id' and 'quantity'."),
        ({"customer_id": 1, "items": []}, 400, "Choose at least one product."),
        ({"customer_id": 1, "items": [{"product_id": 2, "quantity": 13}]}, 409,
         "Only 12 of 'Milk frother' left."),
        ({"customer_id": 7, "items": [{"product_id": 2, "quantity": 1}]}, 404,
         "There is no customer 7."),
    ],
)  # fmt: skip
def test_place_order_refusals(
    client: FlaskClient,
    add_customer: AddCustomer,
    rows: Rows,
    body: dict[str, t.Any],
    status: int,
    message: str,
) -> None:
    assert add_customer("Ada") == 1
    response = client.post("/api/orders", json=body)
    assert response.status_code == status
    assert json_of(response) == {"error": message}
    assert rows("shop", "SELECT sum(stock) FROM product") == [(180,)]


def test_order_by_id_looks_on_every_shard(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, place_order: PlaceOrder
) -> None:
    ada = add_customer("Ada", shard="us")
    order = place_order(ada, {1: 3})
    with RoutingRecorder(db, app) as log:
        body = json_of(client.get(f"/api/orders/{order}"))
    assert body["id"] == str(order) and body["shard"] == "us"
    assert body["total_cents"] == 3 * 2400
    # No shard key in a lookup by id: both shards are asked, in parallel.
    assert log.nodes("eu") == log.nodes("us") == {REPLICA}
    missing = uuid.uuid4()
    response = client.get(f"/api/orders/{missing}")
    assert response.status_code == 404
    assert json_of(response) == {"error": f"No order {missing}."}


def test_report(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, place_order: PlaceOrder
) -> None:
    ada = add_customer("Ada", shard="eu")
    place_order(ada, {2: 2})
    with RoutingRecorder(db, app) as log:
        body = json_of(client.get("/api/report"))
    assert body == {
        "customers": 1,
        "products": 4,
        "units_in_stock": 178,
        "orders": 1,
        "revenue_cents": 7800,
        "shards": [
            {"name": "eu", "orders": 1, "revenue_cents": 7800},
            {"name": "us", "orders": 0, "revenue_cents": 0},
        ],
        "top_products": [{"name": "Milk frother", "quantity": 2}],
        "audit_events": 1,
    }
    # ReportAPI.decorators = [use_replica]
    assert {s.role for s in log.statements} == {Role.REPLICA}


def test_report_refuses_a_write(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, rows: Rows
) -> None:
    def report_and_count_views() -> shop.Report:
        shop.audit("report.viewed")
        return shop.Report(0, 0, 0, 0, 0, [], [], shop.count(AuditEvent))

    monkeypatch.setattr(shop, "report", report_and_count_views)
    with pytest.raises(ReadOnlyError, match="inside 'use_replica'"):
        client.get("/api/report")  # autoflush before the count
    assert rows("audit", "SELECT * FROM audit_event") == []


def test_region(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, place_order: PlaceOrder
) -> None:
    ada = add_customer("Ada", shard="us")
    grace = add_customer("Grace", shard="eu")
    order = place_order(ada, {1: 1})
    place_order(grace, {2: 1})
    with RoutingRecorder(db, app) as log:
        body = json_of(client.get("/api/regions/us"))
    assert body["region"] == "us"
    assert (body["orders"], body["revenue_cents"]) == (1, 2400)
    assert [o["id"] for o in body["latest"]] == [str(order)]
    assert log.nodes("us") == {REPLICA} and log.nodes("eu") == set()
    response = client.get("/api/regions/EU")
    assert response.status_code == 404
    assert json_of(response) == {"error": "There is no region 'EU'."}


def test_async_health(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, place_order: PlaceOrder
) -> None:
    assert api.ASYNC_VIEWS  # the test extra installs flask[async]
    assert app.view_functions["api.health"] is api.health
    assert json_of(client.get("/api/health")) == {
        "status": "ok",
        "customers": 0,
        "orders": 0,
        "audit_events": 0,
    }
    place_order(add_customer("Ada"))
    with RoutingRecorder(db, app) as log:
        body = json_of(client.get("/api/health"))
    assert body == {"status": "ok", "customers": 1, "orders": 1, "audit_events": 2}
    assert {s.role for s in log.statements} == {Role.REPLICA}
    assert {s.cluster for s in log.statements} == {None, "audit", "eu", "us"}


def test_health_without_flask_async(
    app: Flask, client: FlaskClient, add_customer: AddCustomer
) -> None:
    """What ``pip install -e .`` alone serves: the same figures, sync."""
    app.view_functions["api.health"] = api.sync_health
    add_customer("Ada")
    assert json_of(client.get("/api/health")) == {
        "status": "ok",
        "customers": 1,
        "orders": 0,
        "audit_events": 1,
    }


def test_unknown_api_route_is_json(client: FlaskClient) -> None:
    response = client.get("/api/nothing")
    assert response.status_code == 404
    assert "error" in json_of(response)
    response = client.put("/api/orders", json={})
    assert response.status_code == 405
    assert json_of(response) == {
        "error": "The method is not allowed for the requested URL."
    }
