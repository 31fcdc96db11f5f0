"""use_primary / use_replica on sync, async and MethodView views, as context
managers, nested, and restored after exceptions and between requests.
"""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.views import MethodView

from flask_partition import ReadOnlyError
from flask_partition import use_primary
from flask_partition import use_replica
from flask_partition.routing import current_plan
from flask_partition.routing import Plan
from flask_partition.routing import Role
from flask_partition.testing import RoutingRecorder
from partition_models import Author
from partition_models import db


def _read_role() -> str:
    """Read once and report which role answered."""
    with RoutingRecorder(db) as log:
        db.session.scalars(sa.select(Author)).all()
    (role,) = log.roles()
    return role.value


def _write() -> str:
    db.session.add(Author(name="w"))
    db.session.commit()
    return "written"


def test_sync_view_decorators(app: Flask) -> None:
    @app.get("/auto")
    def auto() -> str:
        return _read_role()

    @app.get("/primary")
    @use_primary
    def primary() -> str:
        return _read_role()

    @app.get("/replica")
    @use_replica
    def replica() -> str:
        return _read_role()

    @app.post("/replica-write")
    @use_replica
    def replica_write() -> str:
        return _write()

    client = app.test_client()
    assert client.get("/auto").text == "replica"
    assert client.get("/primary").text == "primary"
    assert client.get("/replica").text == "replica"
    assert primary.__name__ == "primary"  # functools.wraps keeps endpoint names
    with pytest.raises(ReadOnlyError, match="inside 'use_replica'"):
        client.post("/replica-write")
    assert current_plan() == Plan()


def test_async_view_decorators(app: Flask) -> None:
    @app.get("/primary")
    @use_primary
    async def primary() -> str:
        return f"{_read_role()} {current_plan().pinned_by}"

    @app.post("/replica-write")
    @use_replica
    async def replica_write() -> str:
        return _write()

    client = app.test_client()
    assert client.get("/primary").text == "primary use_primary"
    with pytest.raises(ReadOnlyError):
        client.post("/replica-write")
    assert current_plan() == Plan()


def test_method_view_class_and_per_method_decorators(app: Flask) -> None:
    class Pinned(MethodView):
        decorators: t.ClassVar[list[t.Callable[..., t.Any]]] = [use_primary]

        def get(self) -> str:
            return _read_role()

    class PerMethod(MethodView):
        def get(self) -> str:
            return _read_role()

        @use_replica
        def post(self) -> str:
            return _write()

        @use_primary
        async def put(self) -> str:
            return _read_role()

    app.add_url_rule("/pinned", view_func=Pinned.as_view("pinned"))
    app.add_url_rule("/per-method", view_func=PerMethod.as_view("per_method"))
    client = app.test_client()
    assert client.get("/pinned").text == "primary"
    assert client.get("/per-method").text == "replica"
    assert client.put("/per-method").text == "primary"
    with pytest.raises(ReadOnlyError):
        client.post("/per-method")


def test_context_managers_nest_and_restore_on_exceptions(app: Flask) -> None:
    with app.app_context():
        assert _read_role() == "replica"
        pin = use_primary()
        with pin:
            assert _read_role() == "primary"
            with use_replica() as plan:
                assert plan == Plan(Role.REPLICA, True, "use_replica")
                assert _read_role() == "replica"
                with pin:  # the same object entered again while active
                    assert _read_role() == "primary"
                assert current_plan().read_only
            assert current_plan().role is Role.PRIMARY
            with pytest.raises(KeyError), use_replica():
                raise KeyError("inside")
            assert current_plan().pinned_by == "use_primary"
        assert current_plan() == Plan()


def test_one_pin_object_shared_by_threads() -> None:
    import threading

    pin = use_primary()
    inside = threading.Barrier(2)
    seen: list[Plan] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with pin:
                inside.wait(timeout=5)  # both threads inside at once
                seen.append(current_plan())
                inside.wait(timeout=5)
            seen.append(current_plan())
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.role is Role.PRIMARY for p in seen) == [False, False, True, True]


def test_state_restored_after_a_failing_view(app: Flask) -> None:
    @app.get("/boom")
    @use_primary
    def boom() -> str:
        raise RuntimeError("boom")

    client = app.test_client()
    with pytest.raises(RuntimeError, match="boom"):
        client.get("/boom")
    assert current_plan() == Plan()


def test_reused_app_context_between_requests(app: Flask) -> None:
    """pytest-flask and Flask 3.1 reuse a pushed app context for requests."""

    @app.get("/primary")
    @use_primary
    def primary() -> str:
        return _read_role()

    @app.get("/auto")
    def auto() -> str:
        return f"{_read_role()} {current_plan().role}"

    with app.app_context():
        client = app.test_client()
        assert client.get("/primary").text == "primary"
        assert client.get("/auto").text == "replica None"
        with use_replica():
            assert client.get("/primary").text == "primary"
            assert current_plan().read_only
        assert current_plan() == Plan()


def test_decorating_views_needs_no_app_at_import_time() -> None:
    @use_primary
    def view() -> str:
        return "x"

    assert view.__name__ == "view"
    assert repr(use_replica()) == "<use_replica>"
