"""A small blog written the way Flask-SQLAlchemy 3.1's documentation and
tutorials write one. Nothing in it knows Flask-Partition: test_migrating.py
runs it as it is, and as a copy whose only change is the import below.
"""

from __future__ import annotations

import re
import typing as t

import click
from flask import Blueprint
from flask import Flask
from flask import request
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from werkzeug.exceptions import NotFound

db = SQLAlchemy()

post_tag = db.Table(
    "post_tag",
    db.Column("post_id", db.ForeignKey("post.id"), primary_key=True),
    db.Column("tag_id", db.ForeignKey("tag.id"), primary_key=True),
)


class User(db.Model):  # type: ignore[name-defined,misc]
    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(80), unique=True, nullable=False)
    posts = db.relationship("Post", back_populates="author", lazy="write_only")


class Post(db.Model):  # type: ignore[name-defined,misc]
    id = db.Column(db.Integer, primary_key=True)
    author_id = db.Column(db.ForeignKey("user.id"), nullable=False)
    title = db.Column(db.String(120), nullable=False)
    slug = db.Column(db.String(120), nullable=False, default="")
    body = db.Column(db.Text, nullable=False, default="")
    author = db.relationship("User", back_populates="posts")
    tags = db.relationship("Tag", secondary=post_tag, back_populates="posts")
    comments = db.relationship(
        "Comment", back_populates="post", lazy="dynamic", cascade="all, delete-orphan"
    )


class Tag(db.Model):  # type: ignore[name-defined,misc]
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(40), unique=True, nullable=False)
    posts = db.relationship("Post", secondary=post_tag, back_populates="tags")


class Comment(db.Model):  # type: ignore[name-defined,misc]
    id = db.Column(db.Integer, primary_key=True)
    post_id = db.Column(db.ForeignKey("post.id"), nullable=False)
    body = db.Column(db.Text, nullable=False)
    post = db.relationship("Post", back_populates="comments")


class AuditLog(db.Model):  # type: ignore[name-defined,misc]
    __bind_key__ = "audit"
    id = db.Column(db.Integer, primary_key=True)
    action = db.Column(db.String(40), nullable=False)
    detail = db.Column(db.String(200), nullable=False)


def slug_and_audit_new_posts(session: t.Any, context: t.Any, instances: t.Any) -> None:
    """Give new posts a slug, and log their creation in the audit database."""
    for obj in list(session.new):
        if isinstance(obj, Post):
            obj.slug = re.sub(r"[^a-z0-9]+", "-", obj.title.lower()).strip("-")
            session.add(AuditLog(action="post created", detail=obj.title))


db.event.listen(db.session, "before_flush", slug_and_audit_new_posts)


bp = Blueprint("blog", __name__)


def post_json(post: t.Any) -> dict[str, t.Any]:
    return {
        "id": post.id,
        "title": post.title,
        "slug": post.slug,
        "author": post.author.username,
        "tags": sorted(tag.name for tag in post.tags),
        "comments": post.comments.count(),
    }


def page_json(page: t.Any, items: list[t.Any]) -> dict[str, t.Any]:
    return {
        "items": items,
        "page": page.page,
        "per_page": page.per_page,
        "total": page.total,
        "pages": page.pages,
        "has_prev": page.has_prev,
        "prev_num": page.prev_num,
        "has_next": page.has_next,
        "next_num": page.next_num,
        "first": page.first,
        "last": page.last,
        "iter_pages": list(page.iter_pages()),
    }


@bp.get("/posts")
def list_posts() -> ResponseReturnValue:
    page = db.paginate(db.select(Post).order_by(Post.id.desc()), max_per_page=50)
    return page_json(page, [post_json(post) for post in page])


@bp.post("/posts")
def create_post() -> ResponseReturnValue:
    data = request.get_json()
    user = db.one_or_404(
        db.select(User).filter_by(username=data["author"]),
        description=f"No user named {data['author']!r}.",
    )
    post = Post(title=data["title"], body=data.get("body", ""))
    for name in data.get("tags", []):
        tag = db.session.scalar(db.select(Tag).filter_by(name=name))
        post.tags.append(tag or Tag(name=name))
    user.posts.add(post)
    db.session.commit()
    return post_json(post), 201


@bp.get("/posts/<int:id>")
def show_post(id: int) -> ResponseReturnValue:
    post = db.get_or_404(Post, id, description=f"No post {id}.")
    return post_json(post)


@bp.post("/posts/<int:id>/delete")
def delete_post(id: int) -> ResponseReturnValue:
    post = db.get_or_404(Post, id)
    db.session.delete(post)
    db.session.commit()
    return {"deleted": id}


@bp.post("/posts/<int:id>/comments")
def add_comment(id: int) -> ResponseReturnValue:
    post = db.get_or_404(Post, id)
    post.comments.append(Comment(body=request.get_json()["body"]))
    db.session.commit()
    return {"comments": post.comments.count()}, 201


@bp.get("/posts/<int:id>/comments")
def list_comments(id: int) -> ResponseReturnValue:
    post: t.Any = db.get_or_404(Post, id)
    page = post.comments.order_by(Comment.id).paginate(per_page=2)
    return page_json(page, [comment.body for comment in page.items])


@bp.get("/users")
def list_users() -> ResponseReturnValue:
    page = User.query.order_by(User.username).paginate()
    return page_json(page, [user.username for user in page.items])


@bp.get("/users/<username>")
def show_user(username: str) -> ResponseReturnValue:
    user = User.query.filter_by(username=username).first_or_404(
        description=f"No user named {username!r}."
    )
    titles = db.session.scalars(user.posts.select().order_by(Post.id)).all()
    return {"username": user.username, "posts": [post.title for post in titles]}


@bp.get("/users/<username>/latest")
def latest_post(username: str) -> ResponseReturnValue:
    post = db.first_or_404(
        db.select(Post)
        .join(Post.author)
        .where(User.username == username)
        .order_by(Post.id.desc())
    )
    return post_json(post)


@bp.get("/tags/<name>")
def show_tag(name: str) -> ResponseReturnValue:
    query: t.Any = db.session.query(Tag)
    tag = query.filter(Tag.name == name).one_or_404()
    return {"name": tag.name, "posts": sorted(post.title for post in tag.posts)}


@bp.get("/stats")
def stats() -> ResponseReturnValue:
    posts, empty = db.session.execute(
        db.select(
            db.func.count(Post.id),
            db.func.coalesce(db.func.sum(db.case((Post.body == "", 1), else_=0)), 0),
        )
    ).one()
    audit = db.session.scalars(db.select(AuditLog.detail).order_by(AuditLog.id))
    return {"posts": posts, "empty": empty, "audit": audit.all()}


@bp.app_errorhandler(404)
def not_found(error: NotFound) -> ResponseReturnValue:
    return {"error": error.description}, 404


@click.command("init-db")
def init_db_command() -> None:
    """Create the tables of every database."""
    db.create_all()
    click.echo("Initialized the database.")


@click.command("seed")
@click.argument("count", type=int)
def seed_command(count: int) -> None:
    """Add COUNT posts by a user named seed."""
    user = User(username="seed")
    for number in range(1, count + 1):
        user.posts.add(Post(title=f"Seed {number}"))
    db.session.add(user)
    db.session.commit()
    click.echo(f"Added {count} posts.")


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        SQLALCHEMY_DATABASE_URI="sqlite:///blog.db",
        SQLALCHEMY_BINDS={"audit": "sqlite:///audit.db"},
    )
    if test_config is not None:
        app.config.from_mapping(test_config)
    db.init_app(app)
    app.register_blueprint(bp)
    app.cli.add_command(init_db_command)
    app.cli.add_command(seed_command)
    return app
