"""The :class:`PartitionDB` extension: configuration, engines, the scoped
session, schema helpers and the Flask-SQLAlchemy-style helpers.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import os
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
from flask import abort
from flask import current_app
from flask import Flask
from flask import g
from flask import request
from flask import Response
from flask.globals import app_ctx

from . import compat
from . import schema
from .cli_group import partition_group
from .config import ClusterConfig
from .config import mask_uri
from .config import parse_config
from .config import sqlite_file
from .config import Topology
from .consistency import describe_routes
from .consistency import ROUTE_HEADER
from .consistency import TOKEN_HEADER
from .consistency import token_modes
from .consistency import TokenCodec
from .errors import TwoPhaseError
from .model import make_model_base
from .pagination import fetch_page
from .pagination import Pagination
from .replicas import Cluster
from .replicas import cluster_label
from .replicas import make_policy
from .replicas import safe_message
from .routing import _plan
from .routing import _routes
from .routing import Plan
from .session import PartitionSession
from .session import Router
from .sharding import ShardMap
from .transactions import ensure_two_phase

_T = t.TypeVar("_T")
_log = logging.getLogger("flask_partition")

#: Pass as ``bind=`` to :meth:`~flask_partition.PartitionDB.create_all`
#: for every cluster.
ALL: t.Final = "__all__"
_UNSET: t.Any = object()


@dataclasses.dataclass(frozen=True)
class PartitionState:
    """What :meth:`PartitionDB.init_app` built for one application, stored
    in ``app.extensions["partition.state"]``.

    .. versionadded:: 0.1.0
    """

    db: PartitionDB
    topology: Topology
    router: Router
    #: Signs and reads consistency tokens; ``None`` when no cluster uses them.
    tokens: TokenCodec | None = None


@dataclasses.dataclass
class _RequestContext:
    """What the request hooks keep on ``g`` for one request."""

    #: The client's token positions that no replica set has passed yet.
    positions: dict[str | None, float] | None
    #: How many positions the client's token held (0: no valid token).
    sent: int
    #: Routing decisions for the debug header, when it is on.
    routes: dict[tuple[str, str], int] | None
    plan_token: contextvars.Token[Plan] | None = None
    routes_token: contextvars.Token[dict[tuple[str, str], int] | None] | None = None


def _app_ctx_id() -> int:
    """Scope sessions to the application context."""
    return id(app_ctx._get_current_object())  # type: ignore[attr-defined]


class PartitionDB(compat.SQLAlchemyCompat):
    """Flask extension giving each application context one SQLAlchemy
    session over every configured database.

    It takes the arguments of Flask-SQLAlchemy's ``SQLAlchemy`` and offers
    its API (see :doc:`/migrating`), so ``from flask_partition import
    PartitionDB as SQLAlchemy`` is all an application needs to change.

    :param app: Call :meth:`init_app` on this application now.
    :param metadata: The default cluster's metadata, for naming conventions.
    :param session_options: Arguments for the :class:`PartitionSession`,
        e.g. ``{"expire_on_commit": False}``. A ``scopefunc`` key replaces
        the application context as the scope of :attr:`session`.
    :param model_class: A declarative base of your own, subclassing
        :class:`~flask_partition.model.PartitionModel`; it becomes
        :attr:`Model`. Its metadata is the default cluster's. A
        Flask-SQLAlchemy style ``model_class`` (a plain mixin class, or a
        direct subclass of ``DeclarativeBase``) is accepted too; see
        :func:`flask_partition.compat.model_base`.
    :param query_class: The legacy query class of ``Model.query``,
        ``db.session.query()`` and dynamic relationships; subclass
        :class:`flask_partition.compat.Query`.
    :param engine_options: Default :func:`~sqlalchemy.create_engine`
        arguments of every engine, under those of the config.
    :param add_models_to_shell: Add ``db`` and every model to ``flask shell``.
    :param disable_autonaming: Do not derive ``__tablename__`` from class
        names.
    :param shard_map: Maps shard key values to shard names: a
        :class:`~flask_partition.sharding.ShardMap` or a function
        ``key -> shard``. Default: a
        :class:`~flask_partition.sharding.HashShardMap` over the configured
        shards.
    :param shard_chooser: Replaces the key-based choice of a new row's shard,
        with the signature of SQLAlchemy's ``ShardedSession``
        ``shard_chooser(mapper, instance, clause)``.
    :param identity_chooser: Replaces where ``session.get()`` looks:
        ``identity_chooser(mapper, primary_key, **kw) -> [shards]``.
    :param execute_chooser: Replaces which shards a statement without an
        explicit shard runs on: ``execute_chooser(orm_execute_state) ->
        [shards]``. Several shards still run in parallel and merge exactly.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        metadata: sa.MetaData | None = None,
        session_options: dict[str, t.Any] | None = None,
        model_class: type[t.Any] | None = None,
        query_class: type[compat.Query[t.Any]] = compat.Query,
        engine_options: t.Mapping[str, t.Any] | None = None,
        add_models_to_shell: bool = True,
        disable_autonaming: bool = False,
        shard_map: ShardMap | t.Callable[[t.Any], str] | None = None,
        shard_chooser: t.Callable[..., t.Any] | None = None,
        identity_chooser: t.Callable[..., t.Iterable[t.Any]] | None = None,
        execute_chooser: t.Callable[..., t.Iterable[t.Any]] | None = None,
    ) -> None:
        self._init_compat(query_class)
        model_class = compat.model_base(model_class, metadata)
        metadata = model_class.metadata
        metadata.info["bind_key"] = None
        self._metadatas: dict[str | None, sa.MetaData] = {None: metadata}
        self._shard_metadata = sa.MetaData(info={"bind_key": None, "sharded": True})
        self._shard_options: dict[str, t.Any] = {
            "shard_map": shard_map,
            "shard_chooser": shard_chooser,
            "identity_chooser": identity_chooser,
            "execute_chooser": execute_chooser,
        }
        self._shard_resolver: t.Callable[[], str | None] | None = None
        self._engine_options = dict(engine_options or {})
        self._add_models_to_shell = add_models_to_shell
        #: The declarative base for models: ``class User(db.Model): ...``.
        self.Model = make_model_base(self, metadata, model_class)
        self.Model.__partition_autoname__ = not disable_autonaming
        compat.install_query(self.Model, self.Query)
        options = {"query_cls": self.Query, **(session_options or {})}
        scopefunc = options.pop("scopefunc", _app_ctx_id)
        #: The session of the current application context.
        self.session: sa_orm.scoped_session[PartitionSession] = sa_orm.scoped_session(
            sa_orm.sessionmaker(class_=PartitionSession, db=self, **options),
            scopefunc=scopefunc,
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the ``PARTITION_*`` config of ``app``, create its engines,
        register session teardown and add the ``flask partition`` commands
        (see :doc:`/cli`).

        :param app: The Flask application.
        :raises RuntimeError: If a ``PartitionDB`` is already registered on
            ``app``, ``PARTITION_DATABASE_URI`` is missing, or consistency
            tokens are on for a cluster with replicas and neither
            ``SECRET_KEY`` nor ``PARTITION_TOKEN_SECRET`` is set.
        :raises TypeError: A config value has the wrong type (key named).
        :raises ValueError: A config value is malformed (key named, password
            masked); ``PARTITION_CONSISTENCY="lsn"`` or a replica lag limit
            on a database other than PostgreSQL.
        """
        if "partition" in app.extensions:
            raise RuntimeError(
                "A 'PartitionDB' instance is already registered on this app"
                f" ({app.name!r}). Use that instance; one app has one."
            )
        topology = parse_config(app.config, instance_path=app.instance_path)
        topology = compat.with_engine_defaults(topology, self._engine_options)
        modes = token_modes(topology)
        _check_replica_settings(topology)
        if modes and not topology.consistency.secret_keys:
            raise RuntimeError(
                "Consistency tokens must be signed, but neither 'SECRET_KEY' nor"
                " 'PARTITION_TOKEN_SECRET' is set. Set one of them, or set"
                " 'PARTITION_CONSISTENCY' to 'off' to give up read-your-writes"
                " across requests."
            )
        clusters = {
            name: self._make_cluster(cluster, topology, modes.get(name))
            for name, cluster in topology.clusters.items()
        }
        if None not in clusters:  # only SQLALCHEMY_BINDS are configured
            clusters[None] = compat.no_default_cluster()
        shards = {
            name: self._make_cluster(cluster, topology, modes.get(name))
            for name, cluster in topology.shards.items()
        }
        for name in topology.clusters:
            self._metadata_for(name)
        router = Router(
            clusters,
            shards,
            scatter_workers=topology.scatter_workers,
            sender=app,
            commit_mode=topology.commit_mode,
            **self._shard_options,
        )
        if topology.commit_mode == "two_phase":
            try:
                ensure_two_phase(router)
            except (TwoPhaseError, sa_exc.DBAPIError) as error:
                for cluster in router.by_name.values():
                    cluster.dispose()
                raise RuntimeError(
                    f"'PARTITION_COMMIT_MODE' is 'two_phase'. {error}"
                ) from error
        app.extensions["partition"] = self
        app.extensions["partition.state"] = PartitionState(
            db=self,
            topology=topology,
            router=router,
            tokens=TokenCodec(topology.consistency) if modes else None,
        )
        # Where Flask-SQLAlchemy registers itself, for code that looks there.
        app.extensions.setdefault("sqlalchemy", self)
        if self._add_models_to_shell:
            app.shell_context_processor(compat.shell_context(self, self.Model))
        # First of the app's before_request functions, so hooks registered
        # earlier (loading the current user, say) already read with the
        # client's token and the request's shard.
        app.before_request_funcs.setdefault(None, []).insert(0, self._before_request)
        app.after_request(self._after_request)
        app.teardown_request(self._reset_request)
        app.teardown_appcontext(self._teardown_session)
        # By name, on first use: runtime modules never import the commands.
        app.cli.add_command(partition_group())

    def shard_resolver(
        self, resolver: t.Callable[[], str | None]
    ) -> t.Callable[[], str | None]:
        """Register a function that picks the shard of each request, for
        multi-tenant apps where the shard follows from the request::

            @db.shard_resolver
            def shard_from_subdomain():
                return request.host.split(".")[0]

        It runs before each request of every app using this instance. Its
        answer pins sharded models as :func:`~flask_partition.use_shard`
        would (a view's own ``use_shard`` still wins); ``None`` pins
        nothing. A name that is not in ``PARTITION_SHARDS`` aborts the
        request with 404, since it came from the client.

        :param resolver: Takes no argument, reads :data:`flask.request`.

        .. versionadded:: 0.1.0
        """
        self._shard_resolver = resolver
        return resolver

    def _before_request(self) -> None:
        """Set the request's plan: the shard from the resolver and the
        positions of the client's consistency token; start the debug trace.
        """
        state = self.get_state()
        shard = None
        if self._shard_resolver is not None:
            shard = self._shard_resolver()
            if shard is not None and shard not in state.router.shards:
                abort(404, description=f"Unknown shard {str(shard)[:64]!r}.")
        sent, positions = self._read_token(state) if state.tokens else (0, None)
        routes: dict[tuple[str, str], int] | None = (
            {} if state.topology.debug_header else None
        )
        if not (shard or positions or sent or routes is not None):
            return  # the common request: nothing to set or undo
        context = g._partition = _RequestContext(
            positions=positions, sent=sent, routes=routes
        )
        if shard or positions:
            plan = _plan.get()
            # Plan(...) rather than dataclasses.replace(): this runs per request.
            context.plan_token = _plan.set(
                Plan(
                    role=plan.role,
                    read_only=plan.read_only,
                    pinned_by=plan.pinned_by,
                    shard=shard or plan.shard,
                    positions=positions or plan.positions,
                    commit_mode=plan.commit_mode,
                )
            )
        if routes is not None:
            context.routes_token = _routes.set(routes)

    def _read_token(
        self, state: PartitionState
    ) -> tuple[int, dict[str | None, float] | None]:
        """Return how many positions the client's token holds, and those
        that still matter: for a cluster that takes tokens (the names are
        signed by us, but perhaps under an older config) and that not every
        replica has replayed yet.
        """
        assert state.tokens is not None
        text = request.headers.get(TOKEN_HEADER)
        cookie = state.topology.consistency.cookie
        if not text and cookie is not None:
            text = request.cookies.get(cookie)
        if not text:
            return 0, None
        positions = state.tokens.loads(text, time.time())
        if not positions:
            return 0, None
        by_name = state.router.by_name
        pending = {}
        for name, position in positions.items():
            cluster = by_name.get(name)
            if cluster is not None and cluster.token_mode is not None:
                if not cluster.caught_up(position):
                    pending[name] = position
        return len(positions), pending or None

    def _after_request(self, response: Response) -> Response:
        """Give the client a token for the clusters this request committed
        writes to, without the positions every replica has replayed. Add the
        debug header when it is on.
        """
        state = self.get_state()
        context: _RequestContext | None = g.get("_partition")
        if state.tokens is not None:
            self._write_token(state, response, context)
        if context is not None and context.routes is not None:
            response.headers[ROUTE_HEADER] = describe_routes(context.routes)
        return response

    def _write_token(
        self,
        state: PartitionState,
        response: Response,
        context: _RequestContext | None,
    ) -> None:
        assert state.tokens is not None
        session = self.session() if self.session.registry.has() else None
        written = session.committed_writes if session is not None else None
        before = context.positions if context is not None else None
        sent = context.sent if context is not None else 0
        if not written and len(before or ()) == sent:
            return  # nothing new, and the client's token is still exact
        positions = dict(before or {})
        if written:
            assert session is not None
            session.committed_writes = set()
            for name in written:
                cluster = state.router.by_name[name]
                try:
                    position = cluster.position()
                except sa_exc.SQLAlchemyError as error:
                    # The write committed: the response must not fail now.
                    _log.warning(
                        "cannot read the position of %s after a commit; the"
                        " client gets no token for it: %s",
                        cluster.label,
                        safe_message(error, cluster.primary),
                    )
                    continue
                if not cluster.caught_up(position):
                    positions[name] = max(position, positions.get(name, 0))
        if positions == (before or {}) and len(positions) == sent:
            return
        consistency = state.topology.consistency
        if positions:
            text = state.tokens.dumps(positions)
            response.headers[TOKEN_HEADER] = text
            if consistency.cookie is not None:
                response.set_cookie(
                    consistency.cookie,
                    text,
                    max_age=int(consistency.max_age),
                    secure=request.is_secure,
                    httponly=True,
                    samesite="Lax",
                )
        elif sent:
            response.headers[TOKEN_HEADER] = ""
            if consistency.cookie is not None and consistency.cookie in request.cookies:
                response.delete_cookie(
                    consistency.cookie,
                    secure=request.is_secure,
                    httponly=True,
                    samesite="Lax",
                )

    def _reset_request(self, exc: BaseException | None) -> None:
        context: _RequestContext | None = g.pop("_partition", None)
        if context is None:
            return
        if context.plan_token is not None:
            _plan.reset(context.plan_token)
        if context.routes_token is not None:
            _routes.reset(context.routes_token)

    def _make_cluster(
        self, config: ClusterConfig, topology: Topology, token_mode: str | None
    ) -> Cluster:
        primary = _create_engine(config.primary, config)
        replicas = [
            _create_engine(url, config, replica=index)
            for index, url in enumerate(config.replicas)
        ]
        return Cluster(
            config.name,
            primary,
            replicas,
            make_policy(topology.replica_policy),
            is_shard=config.is_shard,
            settings=topology.replica_settings,
            token_mode=token_mode,
            window=topology.consistency.window,
        )

    def _teardown_session(self, exc: BaseException | None) -> None:
        self.session.remove()

    def _metadata_for(self, bind_key: str | None) -> sa.MetaData:
        try:
            return self._metadatas[bind_key]
        except KeyError:
            metadata = sa.MetaData(info={"bind_key": bind_key})
            self._metadatas[bind_key] = metadata
            return metadata

    @property
    def shard_metadata(self) -> sa.MetaData:
        """The metadata of sharded tables (models with ``__shard_key__``).

        A Core table joins it to be sharded; name its key column in
        ``info={"shard_key": "customer_id"}``.
        """
        return self._shard_metadata

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

        A new :class:`~flask_partition.compat.MetadataDict`: its keys are the
        binds, but in an application context looking up one of the app's
        shard names returns :attr:`shard_metadata`, so that Flask-Migrate
        migrates the shards too (see :doc:`/migrations`).
        """
        return compat.MetadataDict(self._metadatas, self)

    @property
    def engines(self) -> t.Mapping[str | None, sa.Engine]:
        """The current app's primary engines by bind key (``None`` default)."""
        state = self.get_state()
        return {
            name: cluster.primary
            for name, cluster in state.router.clusters.items()
            if name in state.topology.clusters
        }

    @property
    def engine(self) -> sa.Engine:
        """The current app's default primary engine.

        :raises sqlalchemy.exc.UnboundExecutionError: When only
            ``SQLALCHEMY_BINDS`` are configured.
        """
        if None not in self.get_state().topology.clusters:
            raise compat.no_default_error()
        return self.get_router().default.primary

    def create_all(
        self,
        bind: str | None | t.Iterable[str | None] = _UNSET,
        *,
        shard: str | t.Iterable[str] = _UNSET,
        bind_key: str | None | t.Iterable[str | None] = _UNSET,
    ) -> None:
        """Create missing tables on each cluster's primary, and the sharded
        tables on every shard's primary.

        With neither argument, everything is created. ``bind`` alone narrows
        to those binds, ``shard`` alone to those shards.

        :param bind: A bind key, a list of them, ``None`` for the default
            cluster, or :data:`~flask_partition.extension.ALL`.
        :param shard: A shard name, a list of them, or
            :data:`~flask_partition.extension.ALL`.
        :param bind_key: Flask-SQLAlchemy's name for ``bind``.
        :raises UnknownClusterError: A model or ``bind`` names a bind the app
            did not configure; :class:`~flask_partition.errors.UnknownShardError`
            for an unknown ``shard``.
        """
        self._call_for_clusters(_bind_arg(bind, bind_key), shard, "create_all")

    def drop_all(
        self,
        bind: str | None | t.Iterable[str | None] = _UNSET,
        *,
        shard: str | t.Iterable[str] = _UNSET,
        bind_key: str | None | t.Iterable[str | None] = _UNSET,
    ) -> None:
        """Drop tables on each cluster's and shard's primary; see
        :meth:`create_all`.
        """
        self._call_for_clusters(_bind_arg(bind, bind_key), shard, "drop_all")

    def reflect(
        self,
        bind: str | None | t.Iterable[str | None] = _UNSET,
        *,
        bind_key: str | None | t.Iterable[str | None] = _UNSET,
    ) -> None:
        """Load the tables of each cluster's primary into its metadata, or
        of the clusters ``bind`` names (see :meth:`create_all`). Shards are
        not reflected.

        :param bind: A bind key, a list of them, ``None`` for the default
            cluster, or :data:`~flask_partition.extension.ALL` (default).
        :param bind_key: Flask-SQLAlchemy's name for ``bind``.
        """
        bind = _bind_arg(bind, bind_key)
        self._call_for_clusters(ALL if bind is _UNSET else bind, _UNSET, "reflect")

    def _call_for_clusters(self, bind: t.Any, shard: t.Any, operation: str) -> None:
        if bind is _UNSET and shard is _UNSET:
            bind = shard = ALL
        chosen = schema.targets(
            self,
            binds=_selection(bind, scalar_none=True),
            shards=_selection(shard, scalar_none=False),
            operation=operation,
        )
        schema.run(chosen, operation)

    def get_or_404(
        self,
        entity: type[_T],
        ident: t.Any,
        *,
        description: str | None = None,
        **kwargs: t.Any,
    ) -> _T:
        """Return the row with primary key ``ident``, or abort with 404.

        :param entity: The model class.
        :param ident: The primary key value.
        :param description: The 404 error's description.
        :param kwargs: Passed to :meth:`~sqlalchemy.orm.Session.get`.
        """
        value = self.session.get(entity, ident, **kwargs)
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
        return fetch_page(
            functools.partial(Pagination, self.session(), select),
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )

    def __repr__(self) -> str:
        return f"<PartitionDB binds={sorted(k for k in self._metadatas if k)!r}>"


def _bind_arg(bind: t.Any, bind_key: t.Any) -> t.Any:
    """Accept Flask-SQLAlchemy's ``bind_key=`` for ``bind=``."""
    if bind_key is _UNSET:
        return bind
    if bind is not _UNSET:
        raise TypeError("Pass 'bind' or its alias 'bind_key', not both.")
    return bind_key


def _selection(value: t.Any, *, scalar_none: bool) -> t.Any:
    """A ``bind=`` or ``shard=`` argument as :mod:`~flask_partition.schema`
    takes it; ``scalar_none``: ``None`` names the default cluster.
    """
    if value is _UNSET:
        return ()
    if value == ALL:
        return schema.EVERY
    if isinstance(value, str) or (scalar_none and value is None):
        return (value,)
    return tuple(value)


def _check_replica_settings(topology: Topology) -> None:
    """Lag limits need replicas that report their lag: PostgreSQL (SQLite
    replicas are the primary's file and never lag).
    """
    settings = topology.replica_settings
    if settings.max_lag is None and settings.max_lag_bytes is None:
        return
    key = (
        "PARTITION_REPLICA_MAX_LAG"
        if settings.max_lag is not None
        else "PARTITION_REPLICA_MAX_LAG_BYTES"
    )
    for config in [*topology.clusters.values(), *topology.shards.values()]:
        for url in config.replicas:
            backend = url.get_backend_name()
            if backend not in ("postgresql", "sqlite"):
                label = cluster_label(config.name, shard=config.is_shard)
                raise ValueError(
                    f"'{key}' is set, but a replica of {label} uses {backend!r},"
                    " whose lag cannot be measured; lag limits need PostgreSQL"
                    " replicas. Remove the limit."
                )


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
                key = config.replicas_key
                key = (
                    f"{key[:-1]}[{replica}]'"
                    if key.endswith("'PARTITION_REPLICAS'")
                    else f"{key}[{replica}]"
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
        label = cluster_label(config.name, shard=config.is_shard)
        raise ValueError(
            f"Cannot create an engine for {mask_uri(url)!r} ({label}): {error}"
        ) from error
