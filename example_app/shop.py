"""What the shop does, shared by the HTML pages, the JSON API and the
``seed`` command. Views decide where statements go (``use_primary``,
``use_replica``, ``use_shard``); these functions only use ``db.session``.
"""

from __future__ import annotations

import dataclasses
import typing as t
import uuid

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm

from flask_partition import use_primary
from flask_partition import use_shard

from .models import AuditEvent
from .models import Customer
from .models import db
from .models import Order
from .models import OrderLine
from .models import Product

#: Products a new shop starts with: name, price in cents, stock.
DEMO_PRODUCTS: t.Final = (
    ("Espresso beans, 1 kg", 2400, 40),
    ("Milk frother", 3900, 12),
    ("Ceramic cup", 900, 120),
    ("Pour-over kettle", 5500, 8),
)


class ShopError(Exception):
    """A request the shop refuses; ``status`` is the HTTP status to answer.

    :param message: A sentence for the customer.
    """

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ShopError):
    """A customer, product or order that does not exist."""

    status = 404


class OutOfStock(ShopError):
    """Fewer items are left than were ordered."""

    status = 409


def shard_names() -> list[str]:
    """The configured shards, in configuration order."""
    return list(db.get_router().shards)


def shard_of_customer(customer_id: int) -> str:
    """The shard that holds the orders of ``customer_id``."""
    shard_map = db.get_router().shard_map
    assert shard_map is not None, "the shop needs PARTITION_SHARDS"
    return shard_map.shard_for(customer_id)


def audit(action: str, customer_id: int | None = None, detail: str = "") -> None:
    """Add an audit event to the session; it is written with the next commit."""
    db.session.add(AuditEvent(action=action, customer_id=customer_id, detail=detail))


def count(model: type[Customer] | type[Product] | type[AuditEvent]) -> int:
    """Count the rows of ``model`` on the cluster it lives in."""
    return db.session.execute(
        sa.select(sa.func.count()).select_from(model)
    ).scalar_one()


def create_customer(name: str, email: str | None = None) -> Customer:
    """Store a new customer and an audit event about it.

    :raises ShopError: Without a name.
    """
    name = name.strip()
    if not name:
        raise ShopError("A customer needs a name.")
    customer = Customer(name=name[:100], email=(email or "").strip()[:200] or None)
    db.session.add(customer)
    # The flush assigns the id the audit event refers to.
    db.session.flush()
    audit("customer.created", customer.id, customer.name)
    db.session.commit()
    return customer


def delete_customer(customer: Customer) -> int:
    """Delete ``customer`` and their orders; return how many orders went.

    The orders are found by their shard key, so the ``DELETE`` statements
    run on the customer's shard only.
    """
    customer_id = customer.id
    db.session.execute(sa.delete(OrderLine).where(OrderLine.customer_id == customer_id))
    deleted = t.cast(
        "sa.CursorResult[t.Any]",
        db.session.execute(sa.delete(Order).where(Order.customer_id == customer_id)),
    )
    db.session.delete(customer)
    audit("customer.deleted", customer_id, f"{deleted.rowcount} orders")
    db.session.commit()
    return deleted.rowcount


def place_order(customer_id: int, quantities: t.Mapping[int, int]) -> Order:
    """Check stock, take it, and store the order on the customer's shard.

    Call it under :func:`~flask_partition.use_primary`: stock and customer
    are read from the primary, where a replica's lag cannot hide the last
    sale. Three clusters are written in one commit: the stock (default
    cluster), the order (a shard) and the audit event (the ``audit`` bind).

    :param customer_id: Who orders.
    :param quantities: Product id to how many; zeros are ignored.
    :raises ShopError: Nothing ordered, or an unknown product.
    :raises NotFound: An unknown customer.
    :raises OutOfStock: Not enough stock; nothing is written.
    """
    wanted = {pid: qty for pid, qty in quantities.items() if qty > 0}
    try:
        if not wanted:
            raise ShopError("Choose at least one product.")
        customer = db.session.get(Customer, customer_id)
        if customer is None:
            raise NotFound(f"There is no customer {customer_id}.")
        # FOR UPDATE locks the rows until the commit on PostgreSQL; SQLite
        # locks the whole database when it writes. The CHECK constraint on
        # stock is the last line of defence on both.
        products = {
            p.id: p
            for p in db.session.scalars(
                sa.select(Product)
                .where(Product.id.in_(wanted))
                .order_by(Product.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        }
        unknown = sorted(set(wanted) - set(products))
        if unknown:
            raise ShopError(f"There is no product {unknown[0]}.")
        for pid, qty in wanted.items():
            if products[pid].stock < qty:
                raise OutOfStock(
                    f"Only {products[pid].stock} of {products[pid].name!r} left."
                )
        order = Order(id=uuid.uuid4(), customer_id=customer.id)
        for pid, qty in sorted(wanted.items()):
            product = products[pid]
            order.lines.append(
                OrderLine(
                    customer_id=customer.id,
                    product_id=pid,
                    product_name=product.name,
                    quantity=qty,
                    price_cents=product.price_cents,
                )
            )
            # Computed by the database from its current value.
            product.stock = Product.stock - qty
        order.total_cents = sum(
            line.quantity * line.price_cents for line in order.lines
        )
        db.session.add(order)
        audit("order.placed", customer.id, f"{order.id} {order.total_cents} cents")
        db.session.commit()
    except sa_exc.IntegrityError:
        db.session.rollback()
        raise OutOfStock("The stock ran out while you ordered.") from None
    except ShopError:
        # Release the row locks now, not when the request ends.
        db.session.rollback()
        raise
    return order


def find_order(customer_id: int, order_id: uuid.UUID) -> Order | None:
    """Load an order and its lines by its customer and id.

    The shard key in the ``WHERE`` sends the query to the customer's shard
    only: its replica, or its primary while the client's consistency token
    says the replica has not replayed the client's own writes yet.
    """
    query = (
        sa.select(Order)
        .where(Order.customer_id == customer_id, Order.id == order_id)
        .options(sa_orm.selectinload(Order.lines))
    )
    return db.session.scalars(query).first()


def orders_of(customer_id: int, limit: int = 50) -> list[Order]:
    """The newest orders of a customer, from the customer's shard."""
    return list(
        db.session.scalars(
            sa.select(Order)
            .where(Order.customer_id == customer_id)
            .order_by(Order.created_at.desc(), Order.id)
            .limit(limit)
        )
    )


def latest_orders(limit: int = 20) -> list[Order]:
    """The newest orders over every shard in scope: read in parallel, then
    merged by ``created_at`` and limited, as one database would.
    """
    return list(
        db.session.scalars(
            sa.select(Order).order_by(Order.created_at.desc(), Order.id).limit(limit)
        )
    )


def customer_names(orders: t.Iterable[Order]) -> dict[int, str]:
    """The names of the customers of ``orders``, from the default cluster:
    one query per cluster, joined in Python.
    """
    ids = {order.customer_id for order in orders}
    if not ids:
        return {}
    rows = db.session.execute(
        sa.select(Customer.id, Customer.name).where(Customer.id.in_(ids))
    )
    return {customer_id: name for customer_id, name in rows}


@dataclasses.dataclass
class ShardFigures:
    """Orders and revenue of one shard (or all of them)."""

    name: str
    orders: int
    revenue_cents: int


@dataclasses.dataclass
class Report:
    """The numbers of the report page."""

    customers: int
    products: int
    units_in_stock: int
    orders: int
    revenue_cents: int
    shards: list[ShardFigures]
    top_products: list[tuple[str, int]]
    audit_events: int

    def as_json(self) -> dict[str, t.Any]:
        """The report as JSON-compatible data."""
        data = dataclasses.asdict(self)
        data["top_products"] = [
            {"name": name, "quantity": quantity} for name, quantity in self.top_products
        ]
        return data


def order_figures() -> tuple[int, int]:
    """Count orders and add up their totals, over the shards in scope."""
    orders, revenue = db.session.execute(
        sa.select(sa.func.count(), sa.func.sum(Order.total_cents))
    ).one()
    return orders, revenue or 0


def report() -> Report:
    """Compute the report: every number is a read.

    Counts and sums over all shards run on every shard in parallel and are
    added up exactly; the per-shard figures pin each shard in turn; the
    top products are grouped on each shard, then merged, sorted and
    limited.
    """
    orders, revenue = order_figures()
    shards = []
    for name in shard_names():
        with use_shard(name):
            shards.append(ShardFigures(name, *order_figures()))
    quantity = sa.func.sum(OrderLine.quantity)
    top = db.session.execute(
        sa.select(OrderLine.product_name, quantity)
        .group_by(OrderLine.product_name)
        .order_by(quantity.desc(), OrderLine.product_name)
        .limit(3)
    ).all()
    units = db.session.scalar(sa.select(sa.func.sum(Product.stock)))
    return Report(
        customers=count(Customer),
        products=count(Product),
        units_in_stock=units or 0,
        orders=orders,
        revenue_cents=revenue,
        shards=shards,
        top_products=[(name, int(qty)) for name, qty in top],
        audit_events=count(AuditEvent),
    )


def add_demo_products() -> int:
    """Add :data:`DEMO_PRODUCTS` when there is no product yet; return how
    many were added.
    """
    with use_primary():
        if count(Product):
            return 0
    db.session.add_all(
        Product(name=name, price_cents=price, stock=stock)
        for name, price, stock in DEMO_PRODUCTS
    )
    db.session.commit()
    return len(DEMO_PRODUCTS)
