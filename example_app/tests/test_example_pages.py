"""Every HTML page of the shop, and where its statements go."""

from __future__ import annotations

import contextlib
import sqlite3
import typing as t
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from example_app import shop
from example_app.models import AuditEvent
from example_app.models import Customer
from example_app.models import db
from example_app.models import Order
from example_app.tests.conftest import AddCustomer
from example_app.tests.conftest import PlaceOrder
from example_app.tests.conftest import Rows
from flask_partition import ReadOnlyError
from flask_partition import use_primary
from flask_partition.routing import Role
from flask_partition.testing import RoutingRecorder

PRIMARY = (Role.PRIMARY, 0)
REPLICA = (Role.REPLICA, 0)


def html(response: t.Any) -> str:
    return t.cast(str, response.get_data(as_text=True))


def test_index_reads_replicas_only(
    app: Flask,
    client: FlaskClient,
    add_customer: AddCustomer,
    place_order: PlaceOrder,
) -> None:
    page = html(client.get("/"))
    assert "No customers yet." in page and "No orders yet." in page
    assert "Espresso beans, 1 kg" in page and "24.00" in page
    ada = add_customer("Ada <script>", shard="eu")
    grace = add_customer("Grace", shard="us")
    place_order(ada, {1: 2})
    place_order(grace, {2: 1})
    db.session.remove()  # a new request's session, despite pytest-flask
    with RoutingRecorder(db, app) as log:
        response = client.get("/")
    page = html(response)
    assert response.status_code == 200
    assert "Ada &lt;script&gt;" in page and "<script>" not in page
    newest, oldest = ("Grace", "Ada &lt;") if grace > ada else ("Ada &lt;", "Grace")
    assert page.index(f">{newest}") < page.index(f">{oldest}")  # by id, newest first
    assert "48.00" in page and "39.00" in page  # both orders, from both shards
    assert log.nodes(None) == {REPLICA}
    # The latest orders: every shard's replica, read in parallel.
    assert log.nodes("eu") == {REPLICA} and log.nodes("us") == {REPLICA}
    assert log.nodes("audit") == set()


def test_create_customer_writes_each_database(
    app: Flask, client: FlaskClient, rows: Rows
) -> None:
    with RoutingRecorder(db, app) as log:
        response = client.post("/customers", data={"name": "Ada", "email": "a@x.org"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert log.nodes(None) == {PRIMARY}
    assert log.nodes("audit") == {PRIMARY}
    assert log.nodes("eu") == log.nodes("us") == set()
    assert rows("shop", "SELECT id, name, email FROM customer") == [
        (1, "Ada", "a@x.org")
    ]
    assert rows("audit", "SELECT customer_id, action, detail FROM audit_event") == [
        (1, "customer.created", "Ada")
    ]
    # Each table lives only in its own database.
    assert rows("audit", "SELECT name FROM sqlite_master WHERE type='table'") == [
        ("audit_event",)
    ]
    page = html(client.get("/"))
    assert "Customer Ada added." in page


def test_create_customer_requires_a_name(client: FlaskClient, rows: Rows) -> None:
    response = client.post("/customers", data={"name": "  "})
    assert response.status_code == 400
    assert "A customer needs a name." in html(response)
    assert "<title>400 Bad Request" in html(response)
    assert rows("shop", "SELECT * FROM customer") == []
    assert rows("audit", "SELECT * FROM audit_event") == []


def test_customer_page_reads_one_shard(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, place_order: PlaceOrder
) -> None:
    ada = add_customer("Ada & co", shard="us")
    other = add_customer("Other", shard="us")
    order = place_order(ada, {3: 2})
    place_order(other, {3: 5})
    with RoutingRecorder(db, app) as log:
        response = client.get(f"/customers/{ada}")
    page = html(response)
    assert response.status_code == 200
    assert "<h1>Ada &amp; co</h1>" in page
    assert "orders stored on shard <strong>us</strong>" in page
    assert f"/customers/{ada}/orders/{order}" in page
    assert "18.00" in page and "45.00" not in page  # not the other's order
    # The shard key in the query sends it to us only.
    assert log.nodes(None) == {REPLICA}
    assert log.nodes("us") == {REPLICA}
    assert log.nodes("eu") == set()


def test_customer_page_unknown(client: FlaskClient) -> None:
    response = client.get("/customers/99")
    assert response.status_code == 404
    assert "There is no customer 99." in html(response)


def test_checkout_form(client: FlaskClient, add_customer: AddCustomer) -> None:
    ada = add_customer("Ada")
    add_customer("Grace")
    page = html(client.get(f"/checkout?customer_id={ada}"))
    assert f'<option value="{ada}" selected>Ada (#{ada})</option>' in page
    assert "Grace" in page
    assert 'name="qty-1"' in page and 'max="40"' in page


def test_checkout_runs_on_the_primaries(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, rows: Rows
) -> None:
    ada = add_customer("Ada", shard="eu")
    with RoutingRecorder(db, app) as log:
        response = client.post(
            "/checkout",
            data={"customer_id": str(ada), "qty-1": "2", "qty-3": "1", "qty-2": "0"},
        )
    assert response.status_code == 302
    ((order_id, total),) = rows("orders-eu", "SELECT id, total_cents FROM 'order'")
    assert total == 2 * 2400 + 900
    assert response.headers["Location"] == (
        f"/customers/{ada}/orders/{uuid.UUID(order_id)}"
    )
    # @use_primary: every statement of the view, reads included.
    assert {s.role for s in log.statements} == {Role.PRIMARY}
    assert log.nodes(None) == log.nodes("eu") == log.nodes("audit") == {PRIMARY}
    assert log.nodes("us") == set()
    assert rows("orders-us", "SELECT * FROM 'order'") == []
    assert rows(
        "orders-eu", "SELECT product_name, quantity FROM order_line ORDER BY 1"
    ) == [
        ("Ceramic cup", 1),
        ("Espresso beans, 1 kg", 2),
    ]
    assert rows("shop", "SELECT id, stock FROM product WHERE id IN (1, 2, 3)") == [
        (1, 38),
        (2, 12),
        (3, 119),
    ]
    ((action, detail),) = rows("audit", "SELECT action, detail FROM audit_event")
    assert (action, detail) == ("order.placed", f"{uuid.UUID(order_id)} 5700 cents")


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"qty-4": "9"}, 409, "Only 8 of &#39;Pour-over kettle&#39; left."),
        ({"qty-1": "0"}, 400, "Choose at least one product."),
        ({"qty-77": "1"}, 400, "There is no product 77."),
        ({"qty-1": "1", "customer_id": "99"}, 404, "There is no customer 99."),
    ],
)
def test_checkout_refusals_write_nothing(
    client: FlaskClient,
    add_customer: AddCustomer,
    rows: Rows,
    form: dict[str, str],
    status: int,
    message: str,
) -> None:
    ada = add_customer("Ada")
    response = client.post("/checkout", data={"customer_id": str(ada), **form})
    assert response.status_code == status
    assert message in html(response)
    assert "<form" in html(response)  # the form again, to correct
    for name in ("orders-eu", "orders-us"):
        assert rows(name, "SELECT * FROM 'order'") == []
    assert rows("shop", "SELECT sum(stock) FROM product") == [(180,)]
    assert rows("audit", "SELECT action FROM audit_event") == [("customer.created",)]


def test_checkout_needs_a_customer(client: FlaskClient) -> None:
    response = client.post("/checkout", data={"qty-1": "1"})
    assert response.status_code == 400
    assert "Choose a customer." in html(response)


def test_checkout_cannot_sell_stock_taken_meanwhile(
    app: Flask, add_customer: AddCustomer, rows: Rows, tmp_path: Path
) -> None:
    """Stock sold by someone else between the check and the write: the CHECK
    constraint refuses negative stock and nothing of the order is written.
    """
    ada = add_customer("Ada")

    def sell_elsewhere(*args: t.Any) -> None:
        with contextlib.closing(sqlite3.connect(tmp_path / "shop.db")) as other:
            other.execute("UPDATE product SET stock = 1 WHERE id = 4")
            other.commit()

    with app.app_context():
        session = db.session()
        sa.event.listen(session, "before_flush", sell_elsewhere, once=True)
        with use_primary(), pytest.raises(shop.OutOfStock) as info:
            shop.place_order(ada, {4: 2})
    assert str(info.value) == "The stock ran out while you ordered."
    for name in ("orders-eu", "orders-us"):
        assert rows(name, "SELECT * FROM 'order'") == []
    assert rows("shop", "SELECT stock FROM product WHERE id = 4") == [(1,)]
    assert rows("audit", "SELECT action FROM audit_event") == [("customer.created",)]


def test_order_page(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, place_order: PlaceOrder
) -> None:
    ada = add_customer("Ada", shard="us")
    order = place_order(ada, {1: 1, 4: 2})
    with RoutingRecorder(db, app) as log:
        response = client.get(f"/customers/{ada}/orders/{order}")
    page = html(response)
    assert response.status_code == 200
    assert "stored on shard <strong>us</strong>" in page
    assert "Pour-over kettle" in page and "110.00" in page and "134.00" in page
    # The order, then its lines (selectinload): both from us's replica.
    assert log.nodes("us") == {REPLICA}
    assert len(log.roles("us")) == 2
    assert log.nodes("eu") == set()


def test_order_page_unknown(
    app: Flask, client: FlaskClient, add_customer: AddCustomer, place_order: PlaceOrder
) -> None:
    ada = add_customer("Ada", shard="eu")
    order = place_order(ada)
    with RoutingRecorder(db, app) as log:
        response = client.get(f"/customers/{ada}/orders/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "There is no order" in html(response)
    assert log.roles("eu") == [Role.REPLICA] and log.nodes("us") == set()
    # The right order under another customer: not on that one's shard.
    other = add_customer("Grace", shard="us")
    assert client.get(f"/customers/{other}/orders/{order}").status_code == 404


def test_report(
    app: Flask,
    client: FlaskClient,
    add_customer: AddCustomer,
    place_order: PlaceOrder,
) -> None:
    eu = add_customer("Ada", shard="eu")
    us = add_customer("Grace", shard="us")
    place_order(eu, {1: 2})
    place_order(eu, {3: 1})
    place_order(us, {1: 1, 2: 1})
    with RoutingRecorder(db, app) as log:
        response = client.get("/reports")
    page = html(response)
    assert response.status_code == 200
    assert '<th>Orders</th><td class="num">3</td>' in page
    # 2 * 24.00 + 9.00 on eu, 24.00 + 39.00 on us
    assert '<th>Revenue</th><td class="num">120.00</td>' in page
    assert (
        '<td class="num">2</td><td class="num">57.00</td>' in page
        and '<td class="num">1</td><td class="num">63.00</td>' in page
    )
    assert "<li>Espresso beans, 1 kg: 3 sold</li>" in page
    # @use_replica: replicas only, on every cluster.
    assert {s.role for s in log.statements} == {Role.REPLICA}
    assert {s.cluster for s in log.statements} == {None, "audit", "eu", "us"}


def test_report_refuses_a_write(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, rows: Rows
) -> None:
    """A write slipped into the report raises before any SQL is sent."""
    report = shop.report

    def report_and_log() -> shop.Report:
        shop.audit("report.viewed")
        db.session.flush()
        return report()

    monkeypatch.setattr(shop, "report", report_and_log)
    with RoutingRecorder(db, app) as log, pytest.raises(ReadOnlyError) as info:
        client.get("/reports")
    assert str(info.value) == (
        "Cannot flush 1 new, 0 changed and 0 deleted objects inside"
        " 'use_replica': it only allows reads. Nothing was sent to the database."
        " Move the write out of the block or use 'use_primary'."
    )
    assert log.statements == []
    assert rows("audit", "SELECT * FROM audit_event") == []


@pytest.mark.parametrize("region", ["eu", "us"])
def test_region_page_stays_on_its_shard(
    app: Flask,
    client: FlaskClient,
    add_customer: AddCustomer,
    place_order: PlaceOrder,
    region: str,
) -> None:
    eu = add_customer("Ada", shard="eu")
    us = add_customer("Grace", shard="us")
    mine, theirs = (eu, us) if region == "eu" else (us, eu)
    place_order(mine, {2: 1})
    place_order(theirs, {4: 1})
    with RoutingRecorder(db, app) as log:
        response = client.get(f"/regions/{region}")
    page = html(response)
    assert response.status_code == 200
    assert f"<h1>Region {region}</h1>" in page
    assert "1 orders, 39.00 revenue" in page
    assert "55.00" not in page  # the other region's order
    other = "us" if region == "eu" else "eu"
    assert log.nodes(region) == {REPLICA}
    assert log.nodes(other) == set()  # use_shard: no scatter
    assert log.nodes(None) == {REPLICA}  # the customers' names


def test_region_page_unknown_region_is_404(app: Flask, client: FlaskClient) -> None:
    with RoutingRecorder(db, app) as log:
        response = client.get("/regions/mars")
    assert response.status_code == 404
    assert "There is no region &#39;mars&#39;." in html(response)
    assert log.statements == []


def test_region_page_is_read_only(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def latest_and_write(limit: int = 20) -> list[Order]:
        db.session.add(Customer(name="sneaky"))
        db.session.flush()
        return []

    monkeypatch.setattr(shop, "latest_orders", latest_and_write)
    with pytest.raises(ReadOnlyError):
        client.get("/regions/eu")


def test_audit_log_pages(
    app: Flask, client: FlaskClient, add_customer: AddCustomer
) -> None:
    for name in ("Ada", "Grace", "Alan"):
        add_customer(name)
    with RoutingRecorder(db, app) as log:
        page = html(client.get("/audit?per_page=2"))
    assert log.nodes("audit") == {REPLICA} and log.nodes(None) == set()
    assert page.index(">Alan<") < page.index(">Grace<")  # newest first
    assert ">Ada<" not in page
    assert "Page 1 of 2" in page and 'href="/audit?page=2"' in page
    second = html(client.get("/audit?per_page=2&page=2"))
    assert ">Ada<" in second and "Newer" in second
    assert client.get("/audit?per_page=2&page=3").status_code == 404
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(AuditEvent.id))) == 3


def test_unknown_page_is_html(client: FlaskClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "<title>404 Not Found" in html(response)


def test_static_stylesheet(client: FlaskClient) -> None:
    response = client.get("/static/style.css")
    assert response.status_code == 200
    assert response.mimetype == "text/css"
    assert b"font" in response.data
    response.close()
