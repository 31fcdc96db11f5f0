"""What this host offers a local PostgreSQL topology: the server binaries,
the OS user to run them as, free loopback ports and a folder for the data,
and the clean-up of servers a killed run left behind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import tempfile
import typing as t

#: Environment variable naming the folder with ``initdb`` and ``pg_ctl``.
BINDIR_ENV = "PARTITION_PG_BINDIR"
#: Environment variable naming the OS user servers run as when we are root.
USER_ENV = "PARTITION_PG_USER"
#: The prefix of the temporary folders of our topologies.
PREFIX = "flask-partition-pg-"


def find_bindir() -> str | None:
    """Return the folder holding PostgreSQL's server binaries, or ``None``.

    ``$PARTITION_PG_BINDIR`` wins; then the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian, Ubuntu); then the folder
    of an ``initdb`` on ``PATH``.

    .. versionadded:: 0.1.0
    """
    override = os.environ.get(BINDIR_ENV)
    if override:
        return override if os.path.exists(os.path.join(override, "initdb")) else None
    root = "/usr/lib/postgresql"
    if os.path.isdir(root):
        versions = sorted(
            (v for v in os.listdir(root) if v.split(".")[0].isdigit()),
            key=lambda v: [int(p) for p in v.split(".") if p.isdigit()],
        )
        for version in reversed(versions):
            candidate = os.path.join(root, version, "bin")
            if os.path.exists(os.path.join(candidate, "initdb")):
                return candidate
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def unavailable_reason() -> str | None:
    """Say why :class:`~flask_partition.pgcluster.PostgresTopology` cannot
    start here, or ``None``.

    .. versionadded:: 0.1.0
    """
    if find_bindir() is None:
        return (
            "PostgreSQL server binaries not found (looked in $PARTITION_PG_BINDIR,"
            " /usr/lib/postgresql/*/bin and PATH); install the 'postgresql' package."
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed; install 'Flask-Partition[postgres]'."
    if os.geteuid() == 0:
        user = os.environ.get(USER_ENV, "postgres")
        try:
            pwd.getpwnam(user)
        except KeyError:
            return (
                f"Running as root and there is no OS user {user!r} to run"
                f" PostgreSQL as; create it or set ${USER_ENV}."
            )
    return None


def _default_base_dir() -> str:
    with contextlib.suppress(OSError):
        if shutil.disk_usage("/dev/shm").free >= 1 << 30:
            return "/dev/shm"
    return tempfile.gettempdir()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As PostgreSQL does: connections of a node that was just killed stay
        # in TIME_WAIT, which must not move the restarted node to a new port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _reap_abandoned(parent: str, stop: t.Callable[[str], None]) -> None:
    """Stop servers left behind by a test run that was killed: a folder of
    ours whose owning process is gone.
    """
    with contextlib.suppress(OSError):
        for entry in os.listdir(parent):
            if not entry.startswith(PREFIX):
                continue
            folder = os.path.join(parent, entry)
            try:
                with open(os.path.join(folder, "owner.pid")) as f:
                    owner = int(f.read().strip())
                os.kill(owner, 0)
                continue  # its owner still runs
            except (OSError, ValueError):
                pass
            for node in os.listdir(folder):
                if os.path.exists(os.path.join(folder, node, "postmaster.pid")):
                    stop(os.path.join(folder, node))
            shutil.rmtree(folder, ignore_errors=True)
