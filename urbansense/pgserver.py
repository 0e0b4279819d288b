"""A private PostgreSQL 15 in a temporary directory, on a free loopback port (tests, demo, bench).

PostgreSQL refuses to run as root, and these machines run everything as root: when we are
root, ``initdb`` and ``postgres`` run as the unprivileged ``postgres`` user Debian's package
creates (``nobody`` without it), through ``subprocess.Popen(user=, group=)``, in a directory
made with ``tempfile.mkdtemp`` under the system temp dir (pytest's own tmp dirs are 0700 root)
and handed to that user. TCP on 127.0.0.1 only (no Unix socket), ``trust`` authentication
for the loopback: a throw-away server for one run, never the machine's own on 5432.
``stop()`` is a fast shutdown (SIGINT), ``kill()`` is SIGKILL, ``start()`` brings it back on
the same port and data directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from urbansense.broker import BrokerUnavailable, free_port

SETUP_HINT = "run `make setup` (installs postgresql)"
BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
DBNAME = "urbansense"


def find_pg_bin() -> Path:
    for d in BIN_DIRS:
        if (Path(d) / "postgres").is_file() and (Path(d) / "initdb").is_file():
            return Path(d)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise BrokerUnavailable(f"PostgreSQL (initdb, postgres) is not installed; {SETUP_HINT}")


def _run_user() -> pwd.struct_passwd | None:
    """The account to run as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise BrokerUnavailable("running as root and no unprivileged user (postgres, nobody) exists")


class PgServer:
    """One ``postgres`` process; ``dsn`` connects to database ``urbansense`` as ``urbansense``."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.bin = find_pg_bin()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.user = _run_user()
        self.root = Path(tempfile.mkdtemp(prefix="urbansense-pg-"))
        self.datadir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._initdb()

    @property
    def dsn(self) -> str:
        return f"host={self.host} port={self.port} dbname={DBNAME} user={DBNAME}"

    def _popen(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        extra: dict[str, object] = {}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
               "HOME": str(self.root)}
        return subprocess.Popen(argv, cwd=self.root, env=env, **extra, **kw)  # type: ignore[call-overload, no-any-return]

    def _initdb(self) -> None:
        proc = self._popen(
            [str(self.bin / "initdb"), "-D", str(self.datadir), "-U", DBNAME, "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}): {out.decode(errors='replace')}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 60.0) -> PgServer:
        """Start (or restart on the same port); a first start whose free port was taken
        meanwhile by another process picks another, up to three times."""
        deadline = time.monotonic() + timeout_s
        for attempt in range(20):
            try:
                return self._start_once(max(1.0, deadline - time.monotonic()))
            except RuntimeError as exc:
                text = str(exc).lower()
                if "pre-existing shared memory block" in text and time.monotonic() < deadline:
                    time.sleep(0.2)  # the killed server's last backends are still exiting
                    continue
                if attempt >= 2 or self._started_once or "could not bind" not in text:
                    raise
                self.port = free_port(self.host)
        return self

    def _start_once(self, timeout_s: float) -> PgServer:
        if self.running:
            raise RuntimeError("postgres already running")
        log = self.log_path.open("ab")
        try:
            self._proc = self._popen(
                [str(self.bin / "postgres"), "-D", str(self.datadir), "-h", self.host,
                 "-p", str(self.port), "-k", "", "-c", "fsync=on",
                 "-c", "max_connections=50", "-c", "shared_buffers=128MB",
                 # Bulk ingest: fewer checkpoints, so fewer full-page images in the WAL.
                 "-c", "max_wal_size=4GB", "-c", "checkpoint_timeout=15min"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # kill() takes the backends with the postmaster
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while not self._accepting():
            if not self.running:
                raise RuntimeError(f"postgres exited; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"postgres not ready within {timeout_s}s; log:\n{self.log_tail()}")
            time.sleep(0.05)
        self._ensure_database()
        self._started_once = True
        return self

    def _accepting(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        import psycopg

        try:
            with psycopg.connect(self.dsn.replace(f"dbname={DBNAME}", "dbname=postgres"),
                                 connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False  # "the database system is starting up"

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn.replace(f"dbname={DBNAME}", "dbname=postgres"),
                             autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DBNAME,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {DBNAME}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 20.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint); no-op if stopped."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends (crash recovery on the next start)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self._proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
