"""A local PostgreSQL topology: a primary with streaming replicas, and
shard servers that are primaries of their own, started in a temporary folder
on free loopback ports.

:class:`PostgresTopology` can pause replay (to create lag on purpose) or stop
and start nodes (to create faults). ``flask partition dev-cluster`` runs one
for development, and tests run one through :mod:`flask_partition.testing`,
which re-exports these names.

Starting servers needs the PostgreSQL server binaries (``initdb``,
``pg_ctl``, ``pg_basebackup``) and :mod:`psycopg`. As root, the servers run
as the ``postgres`` user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
import typing as t

from .pghost import _default_base_dir
from .pghost import _free_port
from .pghost import _port_free
from .pghost import _reap_abandoned
from .pghost import BINDIR_ENV as BINDIR_ENV
from .pghost import find_bindir as find_bindir
from .pghost import PREFIX as _PREFIX
from .pghost import unavailable_reason as unavailable_reason
from .pghost import USER_ENV as USER_ENV

_SERVER_SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
full_page_writes = off
synchronous_commit = on
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
max_prepared_transactions = 20
max_connections = 200
"""
#: Shard names become part of folder and replication slot names.
_SHARD_NAME = re.compile(r"[a-z0-9_]{1,40}")


@dataclasses.dataclass
class PostgresNode:
    """One PostgreSQL server of a :class:`PostgresTopology`.

    .. versionadded:: 0.1.0
    """

    name: str
    datadir: str
    port: int
    is_replica: bool
    running: bool = False
    #: The primary a replica streams from; ``None`` for a primary.
    #:
    #: .. versionadded:: 0.1.0
    upstream: PostgresNode | None = dataclasses.field(default=None, repr=False)

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this node (psycopg driver)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def query(
        self, sql: str, params: t.Sequence[t.Any] = (), *, database: str = "postgres"
    ) -> list[tuple[t.Any, ...]]:
        """Run ``sql`` in autocommit mode on a new connection; return the rows."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            cursor = conn.execute(sql.encode(), params)
            return list(cursor.fetchall()) if cursor.description else []


@dataclasses.dataclass
class ShardServers:
    """One shard server of a :class:`PostgresTopology`: a primary of its own,
    independent of the main primary, with its own streaming replicas.

    .. versionadded:: 0.1.0
    """

    name: str
    primary: PostgresNode
    replicas: list[PostgresNode] = dataclasses.field(default_factory=list)

    def config(self, database: str = "app") -> dict[str, object]:
        """The URLs of ``database`` on this shard's nodes, shaped like a
        ``PARTITION_SHARDS`` value: ``{"primary": url, "replicas": [url, ...]}``.
        """
        return {
            "primary": self.primary.url(database),
            "replicas": [r.url(database) for r in self.replicas],
        }


class PostgresTopology:
    """A primary and streaming replicas, started in a temporary folder;
    optionally also shard servers, each a separate primary with replicas.

    ::

        with PostgresTopology(
            replicas=2, databases=["app"], shards={"eu": 1, "us": 0}
        ) as pg:
            app.config["PARTITION_DATABASE_URI"] = pg.primary.url("app")
            app.config["PARTITION_REPLICAS"] = [r.url("app") for r in pg.replicas]
            app.config["PARTITION_SHARDS"] = {
                name: shard.config("app") for name, shard in pg.shards.items()
            }
            pg.pause_replay()        # replicas stop applying WAL: lag on purpose
            pg.pause_replay(*pg.shards["eu"].replicas)  # shard replicas: explicit
            ...
            pg.resume_replay()
            pg.resume_replay(*pg.shards["eu"].replicas)

    The main primary and the shard servers start in parallel.

    :param replicas: How many streaming replicas of the main primary to start.
    :param databases: Databases to create on the main primary and on every
        shard primary before their replicas are cloned, so the replicas have
        them too.
    :param base_dir: Where to create the temporary folder; by default
        ``/dev/shm`` when it has 1 GiB free, else the system temp folder.
    :param shards: Shard servers to start: shard name to how many streaming
        replicas that shard's primary gets. Names may use lowercase letters,
        digits and ``_`` (they become folder and replication slot names, e.g.
        ``eu_primary``, ``eu_replica1``). See :attr:`shards`.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        replicas: int = 2,
        *,
        databases: t.Sequence[str] = ("app",),
        base_dir: str | None = None,
        shards: t.Mapping[str, int] | None = None,
    ) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        shard_replicas = dict(shards or {})
        for name, count in shard_replicas.items():
            if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
                raise ValueError(
                    f"Shard name {name!r} must be 1-40 lowercase letters,"
                    " digits or '_'."
                )
            if not isinstance(count, int) or count < 0:
                raise ValueError(
                    f"Shard {name!r} needs a replica count >= 0, not {count!r}."
                )
        self._bindir = t.cast(str, find_bindir())
        self._replica_count = replicas
        self._shard_replica_counts = shard_replicas
        self._databases = list(databases)
        self._base_parent = base_dir or _default_base_dir()
        self._run_as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(os.environ.get(USER_ENV, "postgres"))
            self._run_as = (entry.pw_uid, entry.pw_gid)
        self.base = ""
        self.primary: PostgresNode | None = None
        self.replicas: list[PostgresNode] = []
        #: The shard servers by name, in the order given; empty until started.
        #:
        #: .. versionadded:: 0.1.0
        self.shards: dict[str, ShardServers] = {}
        self._port_lock = threading.Lock()
        self._ports_taken: set[int] = set()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> PostgresTopology:
        """Create and start every node; return ``self``.

        The main primary and each shard server are set up in parallel
        threads: copy the template, start, create the databases, clone the
        replicas.
        """
        _reap_abandoned(self._base_parent, self._stop_datadir)
        self.base = tempfile.mkdtemp(prefix=_PREFIX, dir=self._base_parent)
        with open(os.path.join(self.base, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
        self._chown(self.base)
        try:
            template = os.path.join(self.base, "template")
            self._run(
                "initdb", "-D", template, "-U", "postgres", "--auth=trust",
                "--no-sync", "-E", "UTF8", "--locale=C",
            )  # fmt: skip
            with open(os.path.join(template, "postgresql.conf"), "a") as f:
                f.write(_SERVER_SETTINGS)
            # Register every primary before any thread starts, so close()
            # sees whatever got started if one of them fails.
            self.primary = PostgresNode(
                "primary", os.path.join(self.base, "primary"), 0, False
            )
            servers = [(self.primary, self.replicas, "", self._replica_count)]
            for name, count in self._shard_replica_counts.items():
                shard = ShardServers(
                    name,
                    PostgresNode(
                        f"{name}_primary",
                        os.path.join(self.base, f"{name}_primary"),
                        0,
                        False,
                    ),
                )
                self.shards[name] = shard
                servers.append((shard.primary, shard.replicas, f"{name}_", count))
            with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
                futures = [
                    pool.submit(self._start_server, template, *server)
                    for server in servers
                ]
                concurrent.futures.wait(futures)
            for future in futures:
                future.result()  # raise the first failure
            self.wait_for_replay()
        except BaseException:
            self.close()
            raise
        return self

    def _start_server(
        self,
        template: str,
        primary: PostgresNode,
        replicas: list[PostgresNode],
        prefix: str,
        count: int,
    ) -> None:
        """Copy the template to ``primary``, start it, create the databases
        and clone ``count`` replicas into ``replicas``.
        """
        self._run("cp", "-a", template, primary.datadir)
        self.start_node(primary)
        for database in self._databases:
            primary.query(f'CREATE DATABASE "{database}"')
        for index in range(count):
            name = f"{prefix}replica{index + 1}"
            node = PostgresNode(
                name, os.path.join(self.base, name), 0, True, upstream=primary
            )
            replicas.append(node)
            self._run(
                "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port),
                "-U", "postgres", "-D", node.datadir, "-R", "-X", "stream",
                "-c", "fast", "--no-sync", "-C", "-S", name,
            )  # fmt: skip
            self.start_node(node)

    def start_node(self, node: PostgresNode) -> None:
        """Start ``node`` (again), on a new free port if its port is taken."""
        for _attempt in range(5):
            if node.port == 0 or not _port_free(node.port):
                node.port = self._pick_port()
            with open(os.path.join(node.datadir, "postgresql.auto.conf"), "a") as f:
                f.write(f"\nport = {node.port}\n")
            log = os.path.join(node.datadir, "server.log")
            result = self._run(
                "pg_ctl", "-D", node.datadir, "-l", log, "-w", "-t", "60", "start",
                check=False,
            )  # fmt: skip
            if result.returncode == 0:
                node.running = True
                return
            with open(log, errors="replace") as f:
                text = f.read()
            if "could not bind" not in text and "already in use" not in text:
                raise RuntimeError(
                    f"Could not start PostgreSQL node {node.name}:\n{text}"
                )
            node.port = 0
        raise RuntimeError(
            f"Could not find a free port for PostgreSQL node {node.name}."
        )

    def stop_node(self, node: PostgresNode) -> None:
        """Kill ``node`` at once (``pg_ctl stop -m immediate``): a crash."""
        self._stop_datadir(node.datadir)
        node.running = False

    def close(self) -> None:
        """Stop every node, shard servers' too, and delete the folder."""
        running = [node for node in self._all_nodes() if node.running]
        if running:
            with concurrent.futures.ThreadPoolExecutor(len(running)) as pool:
                for node in running:
                    pool.submit(self._stop_quietly, node)
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = ""
        self.primary = None
        self.replicas = []
        self.shards = {}
        with self._port_lock:
            self._ports_taken.clear()

    def _stop_quietly(self, node: PostgresNode) -> None:
        with contextlib.suppress(Exception):
            self.stop_node(node)

    def __enter__(self) -> PostgresTopology:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lag and faults ----------------------------------------------------

    def pause_replay(self, *nodes: PostgresNode) -> None:
        """Stop replicas applying WAL: they show old data until
        :meth:`resume_replay`.

        With no ``nodes``, all replicas of the main primary; shard replicas
        only when passed, e.g. ``pg.pause_replay(*pg.shards["eu"].replicas)``.
        """
        for node in nodes or tuple(self.replicas):
            node.query("SELECT pg_wal_replay_pause()")
            deadline = time.monotonic() + 10
            while (
                node.query("SELECT pg_get_wal_replay_pause_state()")[0][0] != "paused"
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} did not pause replay.")
                time.sleep(0.005)

    def resume_replay(self, *nodes: PostgresNode) -> None:
        """Let replicas apply WAL again and wait until they have caught up
        with their primary.

        With no ``nodes``, all replicas of the main primary; shard replicas
        only when passed, e.g. ``pg.resume_replay(*pg.shards["eu"].replicas)``.
        """
        targets = nodes or tuple(self.replicas)
        for node in targets:
            node.query("SELECT pg_wal_replay_resume()")
        self.wait_for_replay(*targets)

    def wait_for_replay(self, *nodes: PostgresNode, timeout: float = 15) -> None:
        """Wait until replicas have replayed everything their own primary
        (:attr:`PostgresNode.upstream`) has written so far.

        With no ``nodes``, every running replica of the main primary and of
        the shard servers whose primary is running.
        """
        main = self._require_primary()
        if not nodes:
            nodes = tuple(
                node
                for node in self._all_nodes()
                if node.is_replica and node.running and (node.upstream or main).running
            )
        targets: dict[int, str] = {}  # id(upstream) -> its current WAL LSN
        pending: list[tuple[PostgresNode, str]] = []
        for node in nodes:
            upstream = node.upstream or main
            if id(upstream) not in targets:
                targets[id(upstream)] = upstream.query(
                    "SELECT pg_current_wal_lsn()::text"
                )[0][0]
            pending.append((node, targets[id(upstream)]))
        deadline = time.monotonic() + timeout
        for node, target in pending:
            while not node.query(
                "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0",
                (target,),
            )[0][0]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} did not reach {target}.")
                time.sleep(0.005)

    # -- internals -----------------------------------------------------------

    def _all_nodes(self) -> list[PostgresNode]:
        """Every node: main replicas and primary, then each shard's."""
        nodes = [*self.replicas, *([self.primary] if self.primary else [])]
        for shard in self.shards.values():
            nodes += [*shard.replicas, shard.primary]
        return nodes

    def _pick_port(self) -> int:
        """A free port no other node of this topology has been given, so
        nodes starting in parallel threads do not race for one.
        """
        with self._port_lock:
            for _attempt in range(20):
                port = _free_port()
                if port not in self._ports_taken:
                    break
            self._ports_taken.add(port)
            return port

    def _require_primary(self) -> PostgresNode:
        if self.primary is None:
            raise RuntimeError("The topology is not started; call 'start()'.")
        return self.primary

    def _stop_datadir(self, datadir: str) -> None:
        self._run("pg_ctl", "-D", datadir, "-m", "immediate", "-w", "stop", check=False)

    def _chown(self, path: str) -> None:
        if self._run_as is not None:
            os.chown(path, *self._run_as)

    def _run(
        self, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        executable = program if program == "cp" else os.path.join(self._bindir, program)
        kwargs: dict[str, t.Any] = {}
        if self._run_as is not None:
            kwargs = {
                "user": self._run_as[0],
                "group": self._run_as[1],
                "extra_groups": [],
            }
        result = subprocess.run(
            [executable, *args],
            capture_output=True,
            text=True,
            cwd=self.base or None,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result


__all__ = [
    "BINDIR_ENV",
    "USER_ENV",
    "PostgresNode",
    "PostgresTopology",
    "ShardServers",
    "find_bindir",
    "unavailable_reason",
]
