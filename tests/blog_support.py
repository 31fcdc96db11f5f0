"""The Flask-SQLAlchemy blog of :mod:`fsa_blog`, and the same source moved to
Flask-Partition by changing its one ``SQLAlchemy`` import.
"""

from __future__ import annotations

import pathlib
import sys
import types
import typing as t

import fsa_blog

FSA_IMPORT = "from flask_sqlalchemy import SQLAlchemy\n"
PARTITION_IMPORT = "from flask_partition import PartitionDB as SQLAlchemy\n"
_MODULE = "fsa_blog_on_partition"


def partition_blog() -> types.ModuleType:
    """Return :mod:`fsa_blog` with only its import line changed, executed as
    the module ``fsa_blog_on_partition`` (once per test run).
    """
    module = sys.modules.get(_MODULE)
    if module is not None:
        return module
    path = fsa_blog.__file__
    assert path is not None
    lines = pathlib.Path(path).read_text().splitlines(keepends=True)
    moved = [PARTITION_IMPORT if line == FSA_IMPORT else line for line in lines]
    changed = [old for old, new in zip(lines, moved, strict=True) if old != new]
    assert changed == [FSA_IMPORT], "fsa_blog must import SQLAlchemy on one line"
    module = types.ModuleType(_MODULE)
    module.__file__ = path
    sys.modules[_MODULE] = module
    exec(compile("".join(moved), path, "exec"), module.__dict__)
    return module


def seed(blog: t.Any) -> None:
    """Add the rows every blog test starts from, in the current app context:
    users ann and bob, 24 posts (ids 1 to 24, the first two by ann), two
    tags, three comments on post 1.
    """
    db, Post, Tag, User = blog.db, blog.Post, blog.Tag, blog.User
    ann = User(username="ann")
    bob = User(username="bob")
    flask, intro = Tag(name="flask"), Tag(name="intro")
    posts = [
        Post(title="Hello World", body="First!", author=ann, tags=[flask, intro]),
        Post(title="Second Post", body="More.", author=ann, tags=[flask]),
        Post(title="Bob's Notes", author=bob),
        *(Post(title=f"Note {n:02}", body="...", author=bob) for n in range(4, 25)),
    ]
    db.session.add_all([ann, bob, flask, intro])
    for post in posts:
        db.session.add(post)
        db.session.flush()  # ids in this order on every database
    posts[0].comments.extend(blog.Comment(body=body) for body in "abc")
    db.session.commit()
