"""Replica connections end before the session commits, however the session
came to hold them: not only the replica it chose last.
"""

from __future__ import annotations

import pathlib

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import Flask
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_partition import PartitionDB
from flask_partition import PartitionModel


class Base(PartitionModel, sa_orm.DeclarativeBase):
    pass


class Thing(Base):
    id: Mapped[int] = mapped_column(primary_key=True)


def test_an_explicitly_bound_replica_is_released_before_the_commit(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "app.db"
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="s",
        PARTITION_DATABASE_URI=f"sqlite:///{path}",
        PARTITION_REPLICAS=[f"sqlite:///{path}"],
    )
    db = PartitionDB(app, model_class=Base)
    events: list[str] = []
    with app.app_context():
        db.create_all()
        cluster = db.get_router().default
        (replica,) = cluster.replicas
        sa.event.listen(replica.pool, "checkin", lambda *a: events.append("checkin"))
        sa.event.listen(cluster.primary, "commit", lambda *a: events.append("commit"))
        # A replica the session's records know nothing of: bound explicitly.
        connection = db.session.connection(bind_arguments={"bind": replica})
        assert connection.execute(sa.text("SELECT 1")).scalar() == 1
        db.session.add(Thing(id=1))
        db.session.commit()
        # Released (checked in) before the primary commits; with the replica
        # left in the transaction it would be committed after it, as a
        # second cluster of a multi-cluster commit.
        assert events == ["checkin", "commit"]
        assert db.session.get(Thing, 1) is not None
