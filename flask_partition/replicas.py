"""Runtime clusters: the engines of one primary and its replicas, the policy
that picks a replica for a session, replica health (a circuit breaker), and
replay positions and lag read from the replicas.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import random
import threading
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from .config import mask_uri
from .config import ReplicaSettings
from .errors import PrimaryUnavailableError
from .signals import replica_state_changed

_log = logging.getLogger("flask_partition")


class ReplicaPolicy(t.Protocol):
    """Pick which replica a new session reads from.

    :param count: How many replicas the cluster has, at least one.
    :return: An index in ``range(count)``.

    .. versionadded:: 0.1.0
    """

    def __call__(self, count: int) -> int: ...


class RoundRobin:
    """Hand replicas to sessions in turn, so load spreads evenly.

    .. versionadded:: 0.1.0
    """

    def __init__(self) -> None:
        # next() on itertools.count is atomic under the GIL: no lock needed.
        self._counter = itertools.count()

    def __call__(self, count: int) -> int:
        return next(self._counter) % count


class RandomChoice:
    """Pick a replica at random for each session.

    .. versionadded:: 0.1.0
    """

    def __call__(self, count: int) -> int:
        return random.randrange(count)


def make_policy(name: str) -> ReplicaPolicy:
    """Return a fresh policy for ``PARTITION_REPLICA_POLICY`` ``name``.

    :param name: ``"round_robin"`` or ``"random"`` (validated by the config).
    """
    return RandomChoice() if name == "random" else RoundRobin()


def cluster_label(name: str | None, *, shard: bool = False) -> str:
    """Name a cluster for messages: ``the default cluster``, ``bind 'x'`` or
    ``shard 'eu'``.

    .. versionadded:: 0.1.0
    """
    if name is None:
        return "the default cluster"
    return f"shard {name!r}" if shard else f"bind {name!r}"


def parse_lsn(text: str) -> int:
    """Turn a PostgreSQL LSN such as ``"0/3000148"`` into an integer.

    :raises ValueError: When ``text`` is not an LSN.

    .. versionadded:: 0.1.0
    """
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclasses.dataclass(frozen=True)
class Probe:
    """What a replica reported about itself at one moment.

    :param at: :func:`time.monotonic` when it was read.
    :param position: The replayed WAL position (PostgreSQL LSN as an integer).
    :param lag: Seconds behind: the age of the last replayed commit while
        received WAL waits to be replayed, else 0.
    :param lag_bytes: Bytes of received WAL not yet replayed.

    .. versionadded:: 0.1.0
    """

    at: float
    position: int
    lag: float
    lag_bytes: int


# Reads the replay position and the lag in one round trip. A "replica" URL
# that points at a primary reports the primary's own position and no lag.
_PROBE_SQL = """\
SELECT CASE WHEN pg_is_in_recovery()
            THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text,
       CASE WHEN NOT pg_is_in_recovery()
                 OR pg_last_wal_receive_lsn() IS NULL
                 OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn()
            THEN 0
            ELSE coalesce(extract(epoch FROM
                     now() - pg_last_xact_replay_timestamp()), 0) END::float8,
       CASE WHEN pg_is_in_recovery()
            THEN greatest(coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(),
                                                   pg_last_wal_replay_lsn()), 0), 0)
            ELSE 0 END::bigint"""


def read_probe(connection: sa.Connection) -> Probe:
    """Read a PostgreSQL node's replay position and lag on ``connection``,
    as the router measures them (a primary reports its own position and no
    lag).

    .. versionadded:: 0.1.0
    """
    row = connection.exec_driver_sql(_PROBE_SQL).one()
    return Probe(
        at=time.monotonic(),
        position=parse_lsn(row[0]),
        lag=float(row[1]),
        lag_bytes=int(row[2]),
    )


class Cluster:
    """One primary engine and its replica engines, with the health and
    positions of the replicas.

    :param name: The bind or shard name, ``None`` for the default cluster.
    :param primary: The primary's engine: every write goes there.
    :param replicas: The replicas' engines, possibly none.
    :param policy: Chooses a replica for each session that reads.
    :param is_shard: The cluster is a shard.
    :param settings: Cool-down, check interval and lag limits.
    :param token_mode: How consistency tokens record positions here:
        ``"lsn"``, ``"time"`` or ``None`` (no tokens).
    :param window: Seconds a time token keeps reads on the primary.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        name: str | None,
        primary: sa.Engine,
        replicas: t.Sequence[sa.Engine],
        policy: ReplicaPolicy,
        *,
        is_shard: bool = False,
        settings: ReplicaSettings | None = None,
        token_mode: str | None = None,
        window: float = 2.0,
    ) -> None:
        self.name = name
        self.primary = primary
        self.replicas = tuple(replicas)
        self._policy = policy
        self.is_shard = is_shard
        self.settings = settings or ReplicaSettings()
        self.token_mode = token_mode
        self.window = window
        #: The sender of this cluster's signals (the Flask app).
        self.sender: object = None
        self.label = cluster_label(name, shard=is_shard)
        self._index = {engine: i for i, engine in enumerate(self.replicas)}
        self._down_until: dict[int, float] = {}
        self._probes: dict[int, Probe] = {}
        self._probe_locks = [threading.Lock() for _ in self.replicas]
        self._state_lock = threading.Lock()
        self._measures_lag = bool(
            self.settings.max_lag is not None or self.settings.max_lag_bytes is not None
        ) and any(e.dialect.name == "postgresql" for e in self.replicas)
        sa.event.listen(primary, "handle_error", self._primary_error)
        for index, engine in enumerate(self.replicas):
            sa.event.listen(engine, "handle_error", self._replica_error)
            sa.event.listen(
                engine, "connect", functools.partial(self._connected, index)
            )

    # -- choosing ----------------------------------------------------------

    def choose(
        self,
        position: float | None = None,
        exclude: t.Container[sa.Engine] = (),
    ) -> tuple[sa.Engine, str]:
        """Pick the engine for a session's reads, and say why.

        Replicas are tried from the one the policy picks, in turn. Skipped:
        those in ``exclude``, those marked down, those beyond the lag limit,
        and, with a token ``position``, those that have not replayed it.

        :param position: The client's token for this cluster, or ``None``.
        :param exclude: Engines this session saw fail.
        :return: The engine and the reason, for the log and signals.
        """
        replicas = self.replicas
        if not replicas:
            return self.primary, "no replicas"
        down = self._down_until
        now = time.monotonic() if down else 0.0
        count = len(replicas)
        start = self._policy(count) if count > 1 else 0
        skipped: list[str] = []
        for step in range(count):
            index = (start + step) % count
            engine = replicas[index]
            if engine in exclude:
                skipped.append(f"replica[{index}] failed")
            elif now < down.get(index, 0.0):
                skipped.append(f"replica[{index}] down")
            elif self._measures_lag and not self.lag_ok(index):
                skipped.append(f"replica[{index}] lagging")
            elif position is not None and not self.reached(index, position):
                skipped.append(f"replica[{index}] behind the token")
            else:
                reason = "token replayed" if position is not None else "replica"
                if skipped:
                    reason += f" ({', '.join(skipped)})"
                return engine, reason
        return self.primary, f"no usable replica ({', '.join(skipped)})"

    def index_of(self, engine: sa.Engine) -> int | None:
        """Return the config index of a replica engine, ``None`` otherwise."""
        return self._index.get(engine)

    def node(self, engine: sa.Engine) -> str:
        """Name an engine of this cluster: ``primary`` or ``replica[1]``."""
        index = self._index.get(engine)
        return "primary" if index is None else f"replica[{index}]"

    # -- health ------------------------------------------------------------

    def is_down(self, index: int) -> bool:
        """Whether replica ``index`` is being skipped after a failure.

        Once its cool-down is over it is tried again; it is marked up when a
        connection to it succeeds.
        """
        until = self._down_until.get(index)
        return until is not None and time.monotonic() < until

    def mark_down(self, index: int, error: BaseException | str) -> None:
        """Skip replica ``index`` for the cool-down; signal the change."""
        engine = self.replicas[index]
        message = safe_message(error, engine)
        with self._state_lock:
            was_up = index not in self._down_until
            self._down_until[index] = time.monotonic() + self.settings.cooldown
            self._probes.pop(index, None)
        if was_up:
            _log.warning(
                "replica[%d] of %s (%s) is unreachable; skipped for %.1f s: %s",
                index,
                self.label,
                mask_uri(engine.url),
                self.settings.cooldown,
                message,
            )
            self._send_state(index, "down", message)

    def mark_up(self, index: int) -> None:
        """Use replica ``index`` again; signal the change if it was down."""
        with self._state_lock:
            was_down = self._down_until.pop(index, None) is not None
        if was_down:
            _log.info(
                "replica[%d] of %s (%s) is reachable again",
                index,
                self.label,
                mask_uri(self.replicas[index].url),
            )
            self._send_state(index, "up", None)

    def _send_state(self, index: int, state: str, error: str | None) -> None:
        if not replica_state_changed.receivers:
            return
        try:
            replica_state_changed.send(
                self.sender,
                cluster=self.name,
                replica=index,
                url=mask_uri(self.replicas[index].url),
                state=state,
                error=error,
            )
        except Exception:
            # Runs inside SQLAlchemy's error handling and connect events: a
            # receiver's bug must not replace the error or stop failover.
            _log.exception("a 'replica_state_changed' receiver raised")

    def _replica_error(self, context: sa.engine.ExceptionContext) -> None:
        if context.is_pre_ping or context.engine is None:
            return
        if context.connection is not None and not context.is_disconnect:
            return  # an error of the statement, not of the replica
        index = self._index.get(context.engine)
        if index is None:
            return
        # Tells PartitionSession that this replica failed, so it retries.
        error = context.sqlalchemy_exception
        if error is not None:
            error._partition_replica = context.engine  # type: ignore[attr-defined]
        self.mark_down(index, context.original_exception)

    def _connected(self, index: int, dbapi_connection: t.Any, record: t.Any) -> None:
        if index in self._down_until:
            self.mark_up(index)

    def _primary_error(
        self, context: sa.engine.ExceptionContext
    ) -> BaseException | None:
        if context.is_pre_ping:
            return None
        if context.connection is not None and not context.is_disconnect:
            return None
        original = context.original_exception
        message = (
            f"The primary of {self.label} ({mask_uri(self.primary.url)}) is"
            f" unreachable: {safe_message(original, self.primary).rstrip('.')}."
            " Writes to"
            " it fail until it is back; reads that may use replicas keep"
            " working. The transaction was not committed (unless the"
            " connection broke during COMMIT itself)."
        )
        error = PrimaryUnavailableError(
            context.statement,
            None,
            original,
            hide_parameters=True,
            connection_invalidated=context.invalidate_pool_on_disconnect
            and context.is_disconnect,
        )
        error.args = (message,)
        error.cluster = self.name
        return error

    # -- positions and lag -------------------------------------------------

    def reached(self, index: int, position: float) -> bool:
        """Whether replica ``index`` shows everything up to a token position.

        LSN tokens compare with the replica's replay position, read at most
        once per check interval while it is behind (a position at or past
        the token needs no new read: replay only moves forward). Time tokens
        are reached once the window since the commit has passed.
        """
        if self.token_mode != "lsn":
            return time.time() - position >= self.window
        probe = self._probes.get(index)
        if probe is not None and probe.position >= position:
            return True
        probe = self.probe(index)
        return probe is not None and probe.position >= position

    def lag_ok(self, index: int) -> bool:
        """Whether replica ``index`` is within the configured lag limits."""
        probe = self.probe(index)
        if probe is None:
            return self.replicas[index].dialect.name != "postgresql"
        max_lag, max_bytes = self.settings.max_lag, self.settings.max_lag_bytes
        if max_lag is not None and probe.lag > max_lag:
            return False
        return max_bytes is None or probe.lag_bytes <= max_bytes

    def caught_up(self, position: float) -> bool:
        """Whether every replica is known to have reached ``position``: a
        token for it can be dropped. A replica that is down or unknown keeps
        the token, since it may come back behind.
        """
        if self.token_mode != "lsn":
            return time.time() - position >= self.window
        for index in range(len(self.replicas)):
            probe = self._probes.get(index)
            if probe is None or probe.position < position or self.is_down(index):
                return False
        return True

    def probe(self, index: int) -> Probe | None:
        """Return replica ``index``'s replay position and lag, read again
        when older than the check interval; ``None`` if it cannot be read.

        Only one thread reads a replica at a time; the others use what is
        known, so a slow replica does not pile up queries.
        """
        engine = self.replicas[index]
        if engine.dialect.name != "postgresql":
            return None
        probe = self._probes.get(index)
        now = time.monotonic()
        if probe is not None and now - probe.at < self.settings.check_interval:
            return probe
        lock = self._probe_locks[index]
        if not lock.acquire(blocking=probe is None):
            return probe
        try:
            # Threads that waited for the first probe use its result.
            probe = self._probes.get(index)
            if probe is not None and time.monotonic() - probe.at < (
                self.settings.check_interval
            ):
                return probe
            if self.is_down(index):
                return None
            try:
                with engine.connect() as connection:
                    probe = read_probe(connection)
            except sa_exc.SQLAlchemyError as error:
                # A pool timeout as well as a database error: the replica
                # cannot be read now, which must not fail the user's read.
                if not getattr(error, "_partition_replica", None):
                    _log.warning(
                        "cannot read the replay position of replica[%d] of %s: %s",
                        index,
                        self.label,
                        safe_message(error, engine),
                    )
                return None
            self._probes[index] = probe
            return probe
        finally:
            lock.release()

    def position(self) -> float:
        """Return the primary's position for a token, read after a commit:
        ``pg_current_wal_insert_lsn()`` for ``"lsn"`` tokens, the current
        time for ``"time"`` tokens.
        """
        if self.token_mode != "lsn":
            return time.time()
        with self.primary.connect() as connection:
            text = connection.exec_driver_sql(
                "SELECT pg_current_wal_insert_lsn()::text"
            ).scalar_one()
        return parse_lsn(text)

    # -- misc --------------------------------------------------------------

    def engines(self) -> tuple[sa.Engine, ...]:
        """The primary first, then the replicas in configured order."""
        return (self.primary, *self.replicas)

    def dispose(self) -> None:
        """Close every pooled connection of this cluster's engines."""
        for engine in self.engines():
            engine.dispose()

    def __repr__(self) -> str:
        return f"<Cluster {self.name!r} replicas={len(self.replicas)}>"


def safe_message(error: BaseException | str, engine: sa.Engine) -> str:
    """The first line of an error, with the engine's password masked should
    the driver have echoed it. For a SQLAlchemy error wrapping a driver's,
    the driver's message (without the SQL).

    .. versionadded:: 0.1.0
    """
    error = getattr(error, "orig", None) or error
    text = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    password = engine.url.password
    if password:
        text = text.replace(str(password), "***")
    return mask_uri(text)
