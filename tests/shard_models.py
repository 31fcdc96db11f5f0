"""Models for the sharding tests: one extension with a user table in the
default cluster, events in a bind and orders spread over shards.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import Flask
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_partition import PartitionDB
from flask_partition import PartitionModel
from flask_partition import testing


class ShardBase(PartitionModel, sa_orm.DeclarativeBase):
    pass


sdb = PartitionDB(model_class=ShardBase)


class Customer(ShardBase):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class AuditEvent(ShardBase):
    __bind_key__ = "analytics"
    id: Mapped[int] = mapped_column(primary_key=True)
    what: Mapped[str]


class Order(ShardBase):
    __shard_key__ = "customer_id"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int]
    amount: Mapped[int] = mapped_column(default=0)
    note: Mapped[str | None]
    lines: Mapped[list[OrderLine]] = sa_orm.relationship(
        back_populates="order", order_by="OrderLine.id"
    )


class OrderLine(ShardBase):
    __shard_key__ = "customer_id"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("order.id"))
    customer_id: Mapped[int]
    sku: Mapped[str]
    order: Mapped[Order] = sa_orm.relationship(back_populates="lines")


#: A Core table on the shards, keyed like the models.
payments = sa.Table(
    "payment",
    sdb.shard_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, nullable=False),
    sa.Column("cents", sa.Integer, nullable=False),
    info={"shard_key": "customer_id"},
)

ShardAppFactory = t.Callable[..., Flask]


def keys_by_shard(
    app: Flask, shards: t.Sequence[str], count: int = 3
) -> dict[str, list[int]]:
    """Customer ids that map to each of ``shards``, ``count`` per shard."""
    return testing.keys_by_shard(sdb.get_router(app).shard_map, shards, count)
