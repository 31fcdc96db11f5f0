"""The shop's models, one per kind of cluster:

-   customers and products in the default cluster (a primary and a replica);
-   audit events in the ``audit`` bind, a database of their own;
-   orders and their lines on the shards, spread by customer
    (``__shard_key__ = "customer_id"``): all orders of a customer live on one
    shard, so an order and its lines can be joined and committed together.

There are no foreign keys between clusters: an order keeps the customer's
id, and each order line a copy of the product's name and price.
"""

from __future__ import annotations

import datetime
import typing as t
import uuid

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_partition import PartitionDB
from flask_partition import PartitionModel


def utcnow() -> datetime.datetime:
    """Return the current time in UTC, without time zone, as stored."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Model(PartitionModel, sa_orm.DeclarativeBase):
    """A static base, so type checkers understand the models; it becomes
    ``db.Model``.
    """


db = PartitionDB(model_class=Model)


class Customer(Model):
    """A shop customer, stored in the default cluster."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str | None] = mapped_column(sa.String(200))
    visits: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class Product(Model):
    """Something to buy, with the stock left, in the default cluster."""

    # The database refuses negative stock, so two checkouts racing for the
    # last item cannot both succeed, on SQLite as on PostgreSQL.
    __table_args__ = (sa.CheckConstraint("stock >= 0", name="stock_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    price_cents: Mapped[int]
    stock: Mapped[int] = mapped_column(default=0)


class Order(Model):
    """An order, on the shard of its customer.

    The id is a UUID, unique across shards, so ``db.session.get(Order, id)``
    finds one row even though it looks on every shard.
    """

    __shard_key__ = "customer_id"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    customer_id: Mapped[int] = mapped_column(index=True)
    total_cents: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
    lines: Mapped[list[OrderLine]] = sa_orm.relationship(
        back_populates="order", order_by="OrderLine.product_name"
    )

    @property
    def shard(self) -> str | None:
        """The shard this order was loaded from or written to: its identity
        token, ``None`` before it is flushed.
        """
        return t.cast("str | None", sa.inspect(self).identity_token)


class OrderLine(Model):
    """One product of an order. It carries the order's shard key, so it
    always lands on the order's shard.
    """

    __shard_key__ = "customer_id"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    order_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("order.id"))
    customer_id: Mapped[int]
    product_id: Mapped[int]
    product_name: Mapped[str] = mapped_column(sa.String(100))
    quantity: Mapped[int]
    price_cents: Mapped[int]
    order: Mapped[Order] = sa_orm.relationship(back_populates="lines")


class AuditEvent(Model):
    """Something that happened in the shop, stored in the ``audit`` bind."""

    __bind_key__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime.datetime] = mapped_column(default=utcnow, index=True)
    action: Mapped[str] = mapped_column(sa.String(50))
    customer_id: Mapped[int | None]
    detail: Mapped[str] = mapped_column(sa.String(500), default="")
