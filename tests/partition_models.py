"""Models shared by the tests: one extension serving every test app."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import Flask
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_partition import PartitionDB
from flask_partition import PartitionModel

#: Fixture type: build a Flask app with config overrides as keywords.
AppFactory = t.Callable[..., Flask]


class Base(PartitionModel, sa_orm.DeclarativeBase):
    """A static base, so mypy can check the models."""


db = PartitionDB(model_class=Base)


class Author(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    counter: Mapped[int] = mapped_column(default=0)
    books: Mapped[list[Book]] = sa_orm.relationship(back_populates="author")


class Book(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(sa.ForeignKey("author.id"))
    title: Mapped[str] = mapped_column(sa.String(50))
    author: Mapped[Author] = sa_orm.relationship(back_populates="books")


class Event(Base):
    __bind_key__ = "analytics"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


def author_views(app: Flask) -> Flask:
    """Give ``app`` two views: ``POST /authors/<name>`` adds and commits an
    author, ``GET /authors`` lists the names.
    """

    @app.post("/authors/<name>")
    def add_author(name: str) -> str:
        db.session.add(Author(name=name))
        db.session.commit()
        return "added"

    @app.get("/authors")
    def author_names() -> dict[str, list[str]]:
        names = db.session.scalars(sa.select(Author.name).order_by(Author.name))
        return {"names": list(names)}

    return app
