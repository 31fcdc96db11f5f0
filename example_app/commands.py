"""``flask --app example_app seed``: demo data, so the pages and
``flask partition shards`` have something to show.
"""

from __future__ import annotations

import collections
import random

import click
import sqlalchemy as sa
from flask.cli import with_appcontext

from flask_partition import use_primary

from . import shop
from .models import db
from .models import Product

_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen")


@click.command("seed")
@click.option(
    "--customers",
    default=10,
    show_default=True,
    type=click.IntRange(0, 10_000),
    help="New customers to add.",
)
@click.option(
    "--orders",
    default=2,
    show_default=True,
    type=click.IntRange(0, 100),
    help="Orders to place for each new customer.",
)
@click.option("--seed", "seed", default=42, show_default=True, help="Random seed.")
@with_appcontext
def seed_command(customers: int, orders: int, seed: int) -> None:
    """Add the demo products (when there are none), customers and orders."""
    products = shop.add_demo_products()
    # Names and orders draw from separate generators, so the same seed gives
    # the same customers whatever stock is left.
    names, picks = random.Random(seed), random.Random(seed + 1)
    placed: collections.Counter[str] = collections.Counter()
    sold_out = 0
    for _ in range(customers):
        name = f"{names.choice(_FIRST)} {names.choice(_LAST)}"
        email = f"{name.lower().replace(' ', '.')}@example.com"
        customer = shop.create_customer(name, email)
        for _ in range(orders):
            with use_primary():
                in_stock = sorted(
                    db.session.scalars(sa.select(Product.id).where(Product.stock > 0))
                )
            if not in_stock:
                sold_out += 1
                continue
            chosen = picks.sample(in_stock, k=min(2, len(in_stock)))
            with use_primary():
                order = shop.place_order(customer.id, dict.fromkeys(chosen, 1))
            placed[str(order.shard)] += 1
    by_shard = ", ".join(f"{name}: {placed[name]}" for name in shop.shard_names())
    click.echo(
        f"Added {products} products, {customers} customers and"
        f" {sum(placed.values())} orders ({by_shard})."
    )
    if sold_out:
        click.echo(f"{sold_out} orders were skipped: everything is sold out.")
