"""PostgreSQL for tests and benchmarks: the local server if one answers, or a throw-away one.

:func:`local_postgres` gives the admin DSN of the server on 127.0.0.1:5432 when it answers, and
otherwise starts a :class:`PostgresServer` (``initdb`` and ``postgres`` from Debian's
``postgresql`` package, on a free port, in a temporary directory). A missing server and missing
binaries are errors, never skips (Debian: ``apt-get install postgresql``; in this repository
``make test`` installs it). :func:`scratch_database` makes a database of its own and drops it at
the end::

    with local_postgres() as admin, scratch_database(admin) as dsn:
        store = PostgresStateStore.from_url(dsn)

    with PostgresServer() as server:       # one of your own, to kill and restart
        server.kill(); server.start()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from chatstate.testing.redis_server import _LIVE, _Managed, _wait_for, find_free_port

__all__ = [
    "PostgresServer",
    "answers",
    "execute",
    "local_postgres",
    "postgres_binary",
    "scratch_database",
]

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_binary(name: str) -> str:
    """The newest installed PostgreSQL's ``name`` (``initdb``, ``postgres``...)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major)
    path = found[-1] if found else shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql; in this "
            "repository `make test` installs it)"
        )
    return path


def _major(path: str) -> int:
    version = path.split("/")[4]
    return int(version) if version.isdigit() else 0


async def _execute(dsn: str, *statements: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=2)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def execute(dsn: str, *statements: str) -> None:
    """Run ``statements`` on a connection of their own, from sync code or from inside a running
    event loop (on a thread with a loop of its own)."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _execute(dsn, *statements)).result()


def answers(port: int) -> bool:
    """Whether a PostgreSQL server on 127.0.0.1:``port`` accepts connections (``pg_isready``,
    so that it can be asked from inside an event loop too)."""
    ready = subprocess.run(
        [postgres_binary("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "1"],
        check=False,
    )
    return ready.returncode == 0


class PostgresServer(_Managed):
    """One PostgreSQL server on 127.0.0.1 and a free port, its data in a temporary directory
    (trust authentication, user ``postgres``; ``fsync`` off unless ``durable``). ``start()``
    again after :meth:`stop` or :meth:`kill` starts it on the same port and data."""

    def __init__(self, *settings: str, port: int | None = None, durable: bool = False) -> None:
        self.port = port if port is not None else find_free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"chatstate-postgres-{self.port}-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.settings = list(settings) + ([] if durable else ["fsync=off"])
        self.process: subprocess.Popen[bytes] | None = None
        # The server refuses to run as root: as root, run it as the postgres user.
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    @property
    def dsn(self) -> str:
        """The admin DSN (database ``postgres``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> subprocess.Popen[bytes]:
        log = open(self.log, "ab")
        with log:
            return subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, user=self._user, cwd=self.dir
            )

    def start(self, timeout: float = 30.0) -> Self:
        if not self.data.exists():
            initdb = self._run(
                postgres_binary("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                "--no-sync", "-E", "UTF8",
            )  # fmt: skip
            if initdb.wait(timeout=120) != 0:
                raise RuntimeError(f"initdb failed: {self.log.read_text(errors='replace')[-2000:]}")
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}"]
        for setting in self.settings:
            options += ["-c", setting]
        command = [postgres_binary("postgres"), "-D", str(self.data), "-p", str(self.port)]
        self.process = self._run(*command, *options)
        _LIVE.add(self.process)
        process = self.process
        _wait_for(
            lambda: process.poll() is not None or answers(self.port),
            timeout,
            f"PostgreSQL on port {self.port} did not answer",
            self.log,
        )
        if process.poll() is not None:
            raise RuntimeError(f"PostgreSQL on port {self.port} exited: see {self.log}")
        return self

    def kill(self) -> None:
        """SIGKILL of the postmaster: the server dies at once, as in a crash (its backends end
        when they notice; the next start recovers from the WAL)."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """A fast shutdown (SIGINT): sessions are ended, transactions rolled back."""
        self._end(signal.SIGINT)

    def _end(self, signum: int) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signum)
        process.wait(timeout=30)
        _LIVE.discard(process)
        if signum == signal.SIGKILL:
            # Its backends outlive it a moment and hold the shared memory: wait for them.
            _wait_for(lambda: not _children(self.data), 30, "PostgreSQL's backends did not end")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _children(data: Path) -> bool:
    """Whether a process of the server on ``data`` still runs (its pid file's owner)."""
    pid_file = data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


@contextlib.contextmanager
def local_postgres() -> Iterator[str]:
    """The admin DSN of the server on 127.0.0.1:5432 if it answers, else of a throw-away
    :class:`PostgresServer`, stopped at the end."""
    if answers(5432):
        yield LOCAL_DSN
        return
    with PostgresServer() as server:
        yield server.dsn


@contextlib.contextmanager
def scratch_database(admin_dsn: str, prefix: str = "chatstate_test") -> Iterator[str]:
    """A database of its own on the server of ``admin_dsn``, dropped at the end; its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    execute(admin_dsn, f"CREATE DATABASE {name}")
    try:
        yield admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        execute(admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
