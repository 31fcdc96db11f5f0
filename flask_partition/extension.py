"""The :class:`PartitionDB` extension: configuration, engines, the scoped
session, schema helpers and the Flask-SQLAlchemy-style helpers.
"""

from __future__ import annotations

import dataclasses
import os
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
from flask import abort
from flask import current_app
from flask import Flask
from flask.globals import app_ctx

from .config import ClusterConfig
from .config import mask_uri
from .config import parse_config
from .config import sqlite_file
from .config import Topology
from .model import make_model_base
from .pagination import Pagination
from .pagination import resolve_page_args
from .replicas import Cluster
from .replicas import make_policy
from .session import PartitionSession
from .session import Router

_T = t.TypeVar("_T")

#: Pass as ``bind=`` to :meth:`~flask_partition.PartitionDB.create_all`
#: for every cluster.
ALL: t.Final = "__all__"


@dataclasses.dataclass(frozen=True)
class PartitionState:
    """What :meth:`PartitionDB.init_app` built for one application, stored
    in ``app.extensions["partition.state"]``.

    .. versionadded:: 0.1.0
    """

    db: PartitionDB
    topology: Topology
    router: Router


def _app_ctx_id() -> int:
    """Scope sessions to the application context."""
    return id(app_ctx._get_current_object())  # type: ignore[attr-defined]


class PartitionDB:
    """Flask extension giving each application context one SQLAlchemy
    session over every configured database.

    :param app: Call :meth:`init_app` on this application now.
    :param metadata: The default cluster's metadata, for naming conventions.
    :param session_options: Arguments for the :class:`PartitionSession`,
        e.g. ``{"expire_on_commit": False}``.
    :param model_class: A declarative base of your own, subclassing
        :class:`~flask_partition.model.PartitionModel`; it becomes
        :attr:`Model`. Its metadata is the default cluster's.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        metadata: sa.MetaData | None = None,
        session_options: dict[str, t.Any] | None = None,
        model_class: type[sa_orm.DeclarativeBase] | None = None,
    ) -> None:
        if model_class is not None:
            metadata = model_class.metadata
        elif metadata is None:
            metadata = sa.MetaData()
        metadata.info["bind_key"] = None
        self._metadatas: dict[str | None, sa.MetaData] = {None: metadata}
        #: The declarative base for models: ``class User(db.Model): ...``.
        self.Model = make_model_base(self, metadata, model_class)
        #: The session of the current application context.
        self.session: sa_orm.scoped_session[PartitionSession] = sa_orm.scoped_session(
            sa_orm.sessionmaker(
                class_=PartitionSession, db=self, **(session_options or {})
            ),
            scopefunc=_app_ctx_id,
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the ``PARTITION_*`` config of ``app``, create its engines and
        register session teardown.

        :param app: The Flask application.
        :raises RuntimeError: If a ``PartitionDB`` is already registered on
            ``app``, or ``PARTITION_DATABASE_URI`` is missing.
        :raises TypeError: A config value has the wrong type (key named).
        :raises ValueError: A config value is malformed (key named, password
            masked).
        """
        if "partition" in app.extensions:
            raise RuntimeError(
                "A 'PartitionDB' instance is already registered on this app"
                f" ({app.name!r}). Use that instance; one app has one."
            )
        topology = parse_config(app.config, instance_path=app.instance_path)
        clusters = {
            name: self._make_cluster(cluster, topology.replica_policy)
            for name, cluster in topology.clusters.items()
        }
        for name in topology.clusters:
            self._metadata_for(name)
        app.extensions["partition"] = self
        app.extensions["partition.state"] = PartitionState(
            db=self, topology=topology, router=Router(clusters)
        )
        app.teardown_appcontext(self._teardown_session)

    def _make_cluster(self, config: ClusterConfig, policy: str) -> Cluster:
        primary = _create_engine(config.primary, config)
        replicas = [
            _create_engine(url, config, replica=index)
            for index, url in enumerate(config.replicas)
        ]
        return Cluster(config.name, primary, replicas, make_policy(policy))

    def _teardown_session(self, exc: BaseException | None) -> None:
        self.session.remove()

    def _metadata_for(self, bind_key: str | None) -> sa.MetaData:
        try:
            return self._metadatas[bind_key]
        except KeyError:
            metadata = sa.MetaData(info={"bind_key": bind_key})
            self._metadatas[bind_key] = metadata
            return metadata

    def get_state(self, app: Flask | None = None) -> PartitionState:
        """Return what :meth:`init_app` built for ``app``.

        :param app: Defaults to the current application.
        :raises RuntimeError: If this instance was not initialised on it.
        """
        if app is None:
            app = t.cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
        state = app.extensions.get("partition.state")
        if state is None or state.db is not self:
            raise RuntimeError(
                f"The Flask app {app.name!r} is not registered with this"
                " 'PartitionDB' instance. Call 'db.init_app(app)' first."
            )
        return t.cast(PartitionState, state)

    def get_router(self, app: Flask | None = None) -> Router:
        """Return the router of ``app`` (default: the current application)."""
        return self.get_state(app).router

    @property
    def metadata(self) -> sa.MetaData:
        """The default cluster's metadata."""
        return self._metadatas[None]

    @property
    def metadatas(self) -> dict[str | None, sa.MetaData]:
        """Metadata by bind key (``None`` for the default cluster), as
        Flask-Migrate's multi-database template expects.
        """
        return dict(self._metadatas)

    @property
    def engines(self) -> t.Mapping[str | None, sa.Engine]:
        """The current app's primary engines by bind key (``None`` default)."""
        return {
            name: cluster.primary
            for name, cluster in self.get_router().clusters.items()
        }

    @property
    def engine(self) -> sa.Engine:
        """The current app's default primary engine."""
        return self.get_router().default.primary

    def create_all(self, bind: str | None | t.Iterable[str | None] = ALL) -> None:
        """Create missing tables on each cluster's primary.

        :param bind: A bind key, a list of them, ``None`` for the default
            cluster, or :data:`~flask_partition.extension.ALL` (default) for
            every cluster.
        :raises UnknownClusterError: A model or ``bind`` names a bind the app
            did not configure.
        """
        self._call_for_binds(bind, "create_all")

    def drop_all(self, bind: str | None | t.Iterable[str | None] = ALL) -> None:
        """Drop tables on each cluster's primary; see :meth:`create_all`."""
        self._call_for_binds(bind, "drop_all")

    def _call_for_binds(
        self, bind: str | None | t.Iterable[str | None], operation: str
    ) -> None:
        router = self.get_router()
        keys: list[str | None]
        if bind == ALL:
            # This app's clusters, and any bind key a model declared (so a
            # model whose key the app lacks is reported, not skipped).
            keys = list(router.clusters)
            keys += [
                k for k, m in self._metadatas.items() if m.tables and k not in keys
            ]
        elif bind is None or isinstance(bind, str):
            keys = [bind]
        else:
            keys = list(bind)
        for key in keys:
            metadata = self._metadata_for(key)
            tables = ", ".join(repr(name) for name in metadata.tables)
            context = f" (tables {tables})" if tables else ""
            engine = router.cluster(key, context=context).primary
            getattr(metadata, operation)(bind=engine)

    def get_or_404(
        self,
        entity: type[_T],
        ident: t.Any,
        *,
        description: str | None = None,
    ) -> _T:
        """Return the row with primary key ``ident``, or abort with 404.

        :param entity: The model class.
        :param ident: The primary key value.
        :param description: The 404 error's description.
        """
        value = self.session.get(entity, ident)
        if value is None:
            abort(404, description=description)
        return value

    def first_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """Return the first scalar of ``statement``, or abort with 404."""
        value = self.session.execute(statement).scalar()
        if value is None:
            abort(404, description=description)
        return value

    def one_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """Return the only scalar of ``statement``; abort with 404 when there
        is none or more than one.
        """
        try:
            return self.session.execute(statement).scalar_one()
        except (sa_exc.NoResultFound, sa_exc.MultipleResultsFound):
            abort(404, description=description)

    def paginate(
        self,
        select: sa.Select[t.Any],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination:
        """Return one page of ``select``'s results.

        ``page`` and ``per_page`` default to the request's query arguments
        (``?page=2&per_page=10``), then to 1 and 20.

        :param select: The statement; give it an ORDER BY.
        :param page: The 1-based page number.
        :param per_page: Items per page.
        :param max_per_page: Upper bound for ``per_page``.
        :param error_out: Abort with 404 for a bad page number or an empty
            page after the first; otherwise correct the values.
        :param count: Run a COUNT query to fill ``total`` and ``pages``.
        """
        page, per_page = resolve_page_args(page, per_page, max_per_page, error_out)
        pagination = Pagination(
            self.session(), select, page=page, per_page=per_page, count=count
        )
        if error_out and page > 1 and not pagination.items:
            abort(404)
        return pagination

    def __repr__(self) -> str:
        return f"<PartitionDB binds={sorted(k for k in self._metadatas if k)!r}>"


def _create_engine(
    url: sa.URL, config: ClusterConfig, *, replica: int | None = None
) -> sa.Engine:
    options = dict(config.engine_options)
    if url.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            if replica is None:
                # Create the primary's file now: a read-only replica of it
                # cannot open a file that does not exist yet.
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                if not os.path.exists(path):
                    open(path, "ab").close()
            elif not os.path.exists(path):
                key = (
                    f"'PARTITION_REPLICAS[{replica}]'"
                    if config.name is None
                    else f"PARTITION_BINDS[{config.name!r}]['replicas'][{replica}]"
                )
                raise ValueError(
                    f"{key} names the SQLite file {path!r}, which does"
                    " not exist. A SQLite replica opens the primary's file"
                    " read-only; use the primary's path."
                )
        else:
            options.setdefault("poolclass", sa.pool.StaticPool)
            options.setdefault("connect_args", {"check_same_thread": False})
    try:
        return sa.create_engine(url, **options)
    except (sa_exc.ArgumentError, ImportError, TypeError) as error:
        label = (
            "the default cluster" if config.name is None else f"bind {config.name!r}"
        )
        raise ValueError(
            f"Cannot create an engine for {mask_uri(url)!r} ({label}): {error}"
        ) from error
