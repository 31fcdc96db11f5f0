"""The :class:`PartitionDB` extension: configuration, engines, the scoped
session, schema helpers and the Flask-SQLAlchemy-style helpers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
from flask import abort
from flask import current_app
from flask import Flask
from flask import Response
from flask.globals import app_ctx

from . import compat
from . import schema
from .cli_group import partition_group
from .config import parse_config
from .config import Topology
from .consistency import check_token_secret
from .consistency import token_modes
from .consistency import TokenCarrier
from .consistency import TokenCodec
from .errors import TwoPhaseError
from .model import make_model_base
from .pagination import fetch_page
from .pagination import Pagination
from .request_hooks import begin_request
from .request_hooks import finish_request
from .request_hooks import reset_request
from .session import PartitionSession
from .sharding.maps import ShardMap
from .topology import build_router
from .topology import Router
from .transactions.twophase import ensure_two_phase

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
    #: Reads and writes consistency tokens in requests and responses;
    #: ``None`` when no cluster uses them.
    carrier: TokenCarrier | None = None

    @property
    def tokens(self) -> TokenCodec | None:
        """Signs and reads consistency tokens; ``None`` when no cluster
        uses them.
        """
        return None if self.carrier is None else self.carrier.codec


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
        check_token_secret(topology, modes)
        router = build_router(
            topology,
            modes,
            sender=app,
            missing_default=compat.no_default_cluster,
            **self._shard_options,
        )
        for name in topology.clusters:
            self._metadata_for(name)
        if topology.commit_mode == "two_phase":
            try:
                ensure_two_phase(router)
            except (TwoPhaseError, sa_exc.DBAPIError) as error:
                for cluster in router.by_name.values():
                    cluster.dispose()
                raise RuntimeError(
                    f"'PARTITION_COMMIT_MODE' is 'two_phase'. {error}"
                ) from error
        carrier = None
        if modes:
            settings = topology.consistency
            carrier = TokenCarrier(TokenCodec(settings), settings, router.by_name)
        state = PartitionState(self, topology, router, carrier)
        app.extensions["partition"] = self
        app.extensions["partition.state"] = state
        # Where Flask-SQLAlchemy registers itself, for code that looks there.
        app.extensions.setdefault("sqlalchemy", self)
        self._register_hooks(app, state)

    def _register_hooks(self, app: Flask, state: PartitionState) -> None:
        if self._add_models_to_shell:
            app.shell_context_processor(compat.shell_context(self, self.Model))
        # The hooks get this app's state bound: no lookup per request. Each
        # is registered only where it has work to do: Flask inspects every
        # hook of every request, and most apps without shards, tokens and
        # the debug header need neither.
        tokens_or_trace = state.carrier is not None or state.topology.debug_header
        if state.router.shards or tokens_or_trace:
            # Reset at the request's teardown, not the app context's: a
            # request inside an app context already pushed (pytest-flask,
            # a CLI command) does not end it.
            app.teardown_request(reset_request)

            def before_request() -> None:
                self._before_request(state)

            # First of the app's before_request functions, so hooks
            # registered earlier (loading the current user, say) already
            # read with the client's token and the request's shard.
            app.before_request_funcs.setdefault(None, []).insert(0, before_request)
        if tokens_or_trace:

            def after_request(response: Response) -> Response:
                return self._after_request(state, response)

            app.after_request(after_request)
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

        It runs before each request of every app using this instance that
        has ``PARTITION_SHARDS`` (without shards it is never asked). Its
        answer pins sharded models as :func:`~flask_partition.use_shard`
        would (a view's own ``use_shard`` still wins); ``None`` pins
        nothing. A name that is not in ``PARTITION_SHARDS`` aborts the
        request with 404, since it came from the client.

        :param resolver: Takes no argument, reads :data:`flask.request`.

        .. versionadded:: 0.1.0
        """
        self._shard_resolver = resolver
        return resolver

    def _before_request(self, state: PartitionState) -> None:
        shard = None
        if self._shard_resolver is not None:
            shard = self._shard_resolver()
            if shard is not None and shard not in state.router.shards:
                abort(404, description=f"Unknown shard {str(shard)[:64]!r}.")
        begin_request(state.carrier, shard, debug_header=state.topology.debug_header)

    def _after_request(self, state: PartitionState, response: Response) -> Response:
        committed: t.Collection[str | None] = ()
        if state.carrier is not None and self.session.registry.has():
            txn = self.session().txn
            if txn.committed:
                committed = set(txn.committed)
                txn.committed.clear()
        return finish_request(response, state.carrier, committed)

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
            # current_app's extensions: no unwrapping of the proxy needed.
            app = current_app
        state = app.extensions.get("partition.state")
        if state is None or state.db is not self:
            raise RuntimeError(
                f"The Flask app {app.name!r} is not registered with this"
                " 'PartitionDB' instance. Call 'db.init_app(app)' first."
            )
        return state  # type: ignore[no-any-return]

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
