"""The example app's models: customers in the default cluster, audit events
in the ``audit`` bind.
"""

from __future__ import annotations

import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_partition import PartitionDB
from flask_partition import PartitionModel


class Model(PartitionModel, sa_orm.DeclarativeBase):
    """A static base, so type checkers understand the models; it becomes
    ``db.Model``.
    """


db = PartitionDB(model_class=Model)


class Customer(Model):
    """A shop customer, stored in the default cluster."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    visits: Mapped[int] = mapped_column(default=0)


class AuditEvent(Model):
    """Something that happened to a customer, stored in the ``audit`` bind."""

    __bind_key__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int]
    action: Mapped[str]
