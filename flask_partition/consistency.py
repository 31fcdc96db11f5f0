"""Read-your-writes across requests: consistency tokens.

After a request commits a write to a cluster with replicas, the response
carries a signed token holding that cluster's primary position (PostgreSQL:
``pg_current_wal_insert_lsn()`` read after the commit; other databases: the
commit time). A later request that brings the token back reads that cluster
from a replica only if the replica has replayed past the position.
"""

from __future__ import annotations

import logging
import math
import time
import typing as t

import sqlalchemy.exc as sa_exc
from itsdangerous import BadData
from itsdangerous import URLSafeTimedSerializer

from .config import ConsistencySettings
from .config import Topology
from .replicas import Cluster
from .replicas import cluster_label
from .replicas import safe_message

if t.TYPE_CHECKING:
    from flask import Request
    from flask import Response

_log = logging.getLogger("flask_partition")

#: The request and response header that carries the token for API clients.
#:
#: .. versionadded:: 0.1.0
TOKEN_HEADER: t.Final = "X-Partition-Token"
#: The response header that shows where a request's statements went
#: (``PARTITION_DEBUG_HEADER``).
#:
#: .. versionadded:: 0.1.0
ROUTE_HEADER: t.Final = "X-Partition-Route"

_TOKEN_ENVIRON = "HTTP_" + TOKEN_HEADER.upper().replace("-", "_")
_SALT = "flask-partition.consistency"
# A token names a few clusters; anything longer is not ours.
_MAX_TOKEN_LENGTH = 4096
_CACHE_SIZE = 2048

Positions = dict[str | None, float]


def token_modes(topology: Topology) -> dict[str | None, str]:
    """Return how each cluster with replicas records token positions.

    ``"auto"`` gives PostgreSQL clusters LSN tokens and other databases
    time tokens, except SQLite, whose "replica" is the primary's own file and
    cannot lag. ``"lsn"`` requires PostgreSQL; ``"time"`` applies to all.

    :param topology: The parsed configuration.
    :raises ValueError: ``"lsn"`` with a cluster that is not PostgreSQL.

    .. versionadded:: 0.1.0
    """
    mode = topology.consistency.mode
    modes: dict[str | None, str] = {}
    if mode == "off":
        return modes
    for config in [*topology.clusters.values(), *topology.shards.values()]:
        if not config.replicas:
            continue
        backend = config.primary.get_backend_name()
        if mode == "time":
            modes[config.name] = "time"
        elif backend == "postgresql":
            modes[config.name] = "lsn"
        elif mode == "lsn":
            label = cluster_label(config.name, shard=config.is_shard)
            raise ValueError(
                f"'PARTITION_CONSISTENCY' is 'lsn', but {label} uses"
                f" {backend!r}; LSN tokens need PostgreSQL. Use 'auto' (time"
                " tokens for other databases) or 'time'."
            )
        elif backend != "sqlite":
            modes[config.name] = "time"
    return modes


def check_token_secret(topology: Topology, modes: t.Mapping[str | None, str]) -> None:
    """Refuse tokens that could not be signed.

    :param modes: What :func:`token_modes` returned.
    :raises RuntimeError: Some cluster takes tokens, and neither
        ``SECRET_KEY`` nor ``PARTITION_TOKEN_SECRET`` is set.
    """
    if modes and not topology.consistency.secret_keys:
        raise RuntimeError(
            "Consistency tokens must be signed, but neither 'SECRET_KEY' nor"
            " 'PARTITION_TOKEN_SECRET' is set. Set one of them, or set"
            " 'PARTITION_CONSISTENCY' to 'off' to give up read-your-writes"
            " across requests."
        )


class TokenCodec:
    """Sign, verify and parse consistency tokens.

    A token is a list of ``[cluster, position]`` pairs signed with
    :mod:`itsdangerous` (with a timestamp, so it expires after ``max_age``).
    A token that was forged, truncated, expired or malformed reads as
    ``None``, never as an error. Verified tokens are cached by their text, so
    a client that sends the same token again costs a dict lookup.

    :param settings: The secret keys (newest last) and the maximum age.

    .. versionadded:: 0.1.0
    """

    def __init__(self, settings: ConsistencySettings) -> None:
        self.max_age = settings.max_age
        self._serializer = URLSafeTimedSerializer(
            list(settings.secret_keys),  # type: ignore[arg-type]
            salt=_SALT,
        )
        self._cache: dict[str, tuple[float, Positions]] = {}

    def dumps(self, positions: t.Mapping[str | None, float]) -> str:
        """Return the signed token text for ``positions``.

        :param positions: Position by cluster name (``None``: the default).
        """
        return self._serializer.dumps(
            [[name, position] for name, position in positions.items()]
        )

    def loads(self, text: str | None, now: float) -> Positions | None:
        """Return the positions in a token, or ``None`` if it is not valid.

        :param text: The token from the header or cookie.
        :param now: The current :func:`time.time`, to check the age.
        """
        if not text or len(text) > _MAX_TOKEN_LENGTH:
            return None
        cached = self._cache.get(text)
        if cached is not None:
            issued, positions = cached
            return positions if now - issued <= self.max_age else None
        try:
            payload, issued = self._serializer.loads(
                # The age is checked below, by the caller's clock, the same
                # way for cached tokens.
                text,
                return_timestamp=True,
            )
        except (BadData, ValueError, TypeError):
            return None
        parsed = _parse(payload)
        if parsed is None or now - issued.timestamp() > self.max_age:
            return None
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[text] = (issued.timestamp(), parsed)
        return parsed


def _parse(payload: object) -> Positions | None:
    if not isinstance(payload, list):
        return None
    positions: Positions = {}
    for item in payload:
        if not (isinstance(item, list) and len(item) == 2):
            return None
        name, position = item
        if not (name is None or isinstance(name, str)):
            return None
        if isinstance(position, bool) or not isinstance(position, (int, float)):
            return None
        if not (math.isfinite(position) and position >= 0):
            return None
        positions[name] = position
    return positions


class TokenCarrier:
    """Read the client's token from a request and give it a new one in the
    response: the cookie and the :data:`TOKEN_HEADER` header.

    :param codec: Signs and reads tokens.
    :param settings: The cookie name and the maximum age.
    :param clusters: Every cluster by name.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        codec: TokenCodec,
        settings: ConsistencySettings,
        clusters: t.Mapping[str | None, Cluster],
    ) -> None:
        self.codec = codec
        self.settings = settings
        self.clusters = clusters

    def read(self, request: Request) -> tuple[int, Positions | None]:
        """Return how many positions the client's token holds, and those
        that still matter: for a cluster that takes tokens (the names are
        signed by us, but perhaps under an older config) and that not every
        replica has replayed yet.
        """
        # The WSGI environ, not request.headers: a missing header costs
        # EnvironHeaders a KeyError. And the Cookie header is parsed only when
        # it may hold ours: most requests bring none.
        environ = request.environ
        text = environ.get(_TOKEN_ENVIRON)
        cookie = self.settings.cookie
        if not text and cookie is not None and cookie in environ.get("HTTP_COOKIE", ""):
            text = request.cookies.get(cookie)
        if not text:
            return 0, None
        positions = self.codec.loads(text, time.time())
        if not positions:
            return 0, None
        pending = {}
        for name, position in positions.items():
            cluster = self.clusters.get(name)
            if cluster is not None and cluster.token_mode is not None:
                if not cluster.caught_up(position):
                    pending[name] = position
        return len(positions), pending or None

    def write(
        self,
        request: Request,
        response: Response,
        committed: t.Collection[str | None],
        before: Positions | None,
        sent: int,
    ) -> None:
        """Give the client a token for the clusters this request committed
        writes to and the positions it brought, without those every replica
        has replayed; remove the client's token when none is left.

        :param committed: Clusters with tokens this request committed to.
        :param before: The positions of the client's token still pending.
        :param sent: How many positions the client's token held.
        """
        if not committed and len(before or ()) == sent:
            return  # nothing new, and the client's token is still exact
        positions = dict(before or {})
        for name in committed:
            position = self._position_after_commit(self.clusters[name])
            if position is not None:
                positions[name] = max(position, positions.get(name, 0))
        if positions == (before or {}) and len(positions) == sent:
            return
        if positions:
            self._set(request, response, self.codec.dumps(positions))
        elif sent:
            self._clear(request, response)

    def _position_after_commit(self, cluster: Cluster) -> float | None:
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
            return None
        return None if cluster.caught_up(position) else position

    def _set(self, request: Request, response: Response, text: str) -> None:
        response.headers[TOKEN_HEADER] = text
        if self.settings.cookie is not None:
            response.set_cookie(
                self.settings.cookie,
                text,
                max_age=int(self.settings.max_age),
                secure=request.is_secure,
                httponly=True,
                samesite="Lax",
            )

    def _clear(self, request: Request, response: Response) -> None:
        response.headers[TOKEN_HEADER] = ""
        cookie = self.settings.cookie
        if cookie is not None and cookie in request.cookies:
            response.delete_cookie(
                cookie, secure=request.is_secure, httponly=True, samesite="Lax"
            )
