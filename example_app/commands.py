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
    rng = random.Random(seed)
    with use_primary():
        product_ids = list(db.session.scalars(sa.select(Product.id)))
    placed: collections.Counter[str] = collections.Counter()
    sold_out = 0
    for _ in range(customers):
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        email = f"{name.lower().replace(' ', '.')}@example.com"
        customer = shop.create_customer(name, email)
        for _ in range(orders):
            chosen = rng.sample(product_ids, k=min(2, len(product_ids)))
            try:
                with use_primary():
                    order = shop.place_order(customer.id, dict.fromkeys(chosen, 1))
            except shop.OutOfStock:
                sold_out += 1
            else:
                placed[str(sa.inspect(order).identity_token)] += 1
    by_shard = ", ".join(f"{name}: {placed[name]}" for name in shop.shard_names())
    click.echo(
        f"Added {products} products, {customers} customers and"
        f" {sum(placed.values())} orders ({by_shard})."
    )
    if sold_out:
        click.echo(f"{sold_out} orders were skipped: out of stock.")
