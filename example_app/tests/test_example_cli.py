"""The shop's own ``seed`` command and ``flask partition`` on the shop,
through pytest-flask's ``runner`` fixture.
"""

from __future__ import annotations

import json

from flask.testing import FlaskCliRunner

from example_app import shop
from example_app.tests.conftest import Rows


def test_seed_adds_customers_and_orders(runner: FlaskCliRunner, rows: Rows) -> None:
    result = runner.invoke(args=["seed", "--customers", "6", "--orders", "2"])
    assert result.exit_code == 0, result.output
    eu = rows("orders-eu", "SELECT count(*) FROM 'order'")[0][0]
    us = rows("orders-us", "SELECT count(*) FROM 'order'")[0][0]
    # The products exist already: create_app added them.
    assert result.output == (
        f"Added 0 products, 6 customers and 12 orders (eu: {eu}, us: {us}).\n"
    )
    assert eu + us == 12 and eu > 0 and us > 0
    assert rows("shop", "SELECT count(*) FROM customer") == [(6,)]
    # Every order is on the shard of its customer.
    for name in ("eu", "us"):
        for (customer_id,) in rows(f"orders-{name}", "SELECT customer_id FROM 'order'"):
            assert shop.shard_of_customer(customer_id) == name
    # Same seed, same data: a second run adds six more, the same way.
    again = runner.invoke(args=["seed", "--customers", "6", "--orders", "2"])
    assert again.exit_code == 0
    names = rows("shop", "SELECT name FROM customer ORDER BY id")
    assert names[:6] == names[6:]


def test_seed_sells_what_is_in_stock(runner: FlaskCliRunner, rows: Rows) -> None:
    result = runner.invoke(args=["seed", "--customers", "60", "--orders", "3"])
    assert result.exit_code == 0
    placed = sum(
        rows(f"orders-{name}", "SELECT count(*) FROM 'order'")[0][0]
        for name in ("eu", "us")
    )
    # Orders take one of each of up to two products still in stock, until
    # all 180 units are sold; the remaining orders are skipped.
    sold = sum(
        rows(f"orders-{name}", "SELECT sum(quantity) FROM order_line")[0][0]
        for name in ("eu", "us")
    )
    assert sold == 180
    assert 90 <= placed < 180
    assert result.output.splitlines()[-1] == (
        f"{180 - placed} orders were skipped: everything is sold out."
    )
    assert rows("shop", "SELECT max(stock) FROM product") == [(0,)]


def test_seed_options_are_checked(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["seed", "--customers", "-1"])
    assert result.exit_code == 2
    assert "Invalid value for '--customers'" in result.output


def test_partition_commands_on_the_shop(runner: FlaskCliRunner) -> None:
    status = runner.invoke(args=["partition", "status", "--json"])
    assert status.exit_code == 0
    nodes = json.loads(status.stdout)["nodes"]
    assert [(n["cluster"], n["role"]) for n in nodes] == [
        (None, "primary"),
        (None, "replica"),
        ("audit", "primary"),
        ("audit", "replica"),
        ("eu", "primary"),
        ("eu", "replica"),
        ("us", "primary"),
        ("us", "replica"),
    ]
    assert runner.invoke(args=["seed", "--customers", "3"]).exit_code == 0
    shards = runner.invoke(args=["partition", "shards", "--json", "--key", "1"])
    data = json.loads(shards.stdout)
    assert sum(s["rows"]["order"] for s in data["shards"].values()) == 6
    assert data["keys"]["1"]["shard"] == shop.shard_of_customer(1)
