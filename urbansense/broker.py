"""A private Mosquitto broker (tests, demo, bench): plain, TLS or username/password, on a free port.

Readiness is event driven: mosquitto runs with ``log_type all`` to stderr, a reader thread
watches for the "mosquitto version ... running" line (printed once every listener is bound),
and ``start()`` then confirms with a TCP connect, all under one deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SETUP_HINT = "run `make setup` (installs mosquitto and openssl)"
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")  # not on every user's PATH


class BrokerUnavailable(RuntimeError):
    """mosquitto / openssl / mosquitto_passwd is not installed."""


def find_tool(name: str) -> str:
    """Absolute path of ``name``, also looking in the sbin directories (not on every PATH)."""
    found = shutil.which(name)
    if found is None:
        for d in SBIN_DIRS:
            cand = Path(d) / name
            if cand.is_file() and os.access(cand, os.X_OK):
                found = str(cand)
                break
    if found is None:
        raise BrokerUnavailable(f"{name} is not installed; {SETUP_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsMaterial:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost (PEM files)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


def make_tls_material(directory: Path, days: int = 30) -> TlsMaterial:
    """Generate a CA and a CA-signed server certificate with the ``openssl`` CLI."""
    openssl = find_tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(
        [
            openssl,
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            str(days),
            "-subj",
            "/CN=urbansense test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        directory,
    )
    _run(
        [
            openssl,
            "req",
            "-new",
            *ec,
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        directory,
    )
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid:always\n"
    )
    _run(
        [
            openssl,
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            str(days),
            "-extfile",
            "server.ext",
        ],
        directory,
    )
    for key in ("ca.key", "server.key"):
        (directory / key).chmod(0o600)
    return TlsMaterial(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
    )


def make_client_cert(material: TlsMaterial, directory: Path, name: str = "gw-1", days: int = 30) -> tuple[Path, Path]:
    """A client certificate (CN ``name``) signed by ``material``'s CA: (cert, key 0600)."""
    openssl = find_tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    _run([openssl, "req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"],
         directory)
    (directory / f"{name}.ext").write_text("basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    _run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(material.ca_cert), "-CAkey",
          str(material.ca_key), "-CAcreateserial", "-out", str(cert), "-days", str(days),
          "-extfile", str(directory / f"{name}.ext")], directory)
    key.chmod(0o600)
    return cert, key


def make_password_file(path: Path, users: Iterable[tuple[str, str]]) -> Path:
    """Create a mosquitto password file with ``mosquitto_passwd -b``."""
    tool = find_tool("mosquitto_passwd")
    first = True
    for user, password in users:
        cmd = [tool, "-b"] + (["-c"] if first else []) + [str(path), user, password]
        _run(cmd, path.parent)
        first = False
    path.chmod(0o600)
    return path


class Broker:
    """One mosquitto process bound to ``host:port`` (127.0.0.1 only).

    Attributes: ``host``, ``port``, ``tls`` (bool), ``ca_path`` (CA certificate for TLS
    brokers, else None), ``username`` / ``password`` (auth brokers, else None),
    ``config_path``, ``log`` (lines mosquitto printed, all runs).
    ``start()`` (re)starts on the same port, ``stop()`` is a clean SIGTERM shutdown,
    ``kill()`` is SIGKILL (an abrupt outage). ``running`` tells if the process is alive.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        tls: TlsMaterial | None = None,
        users: dict[str, str] | None = None,
        persistence: bool = False,
        extra_config: str = "",
        host: str = "127.0.0.1",
    ) -> None:
        self.binary = find_tool("mosquitto")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(host)
        self.tls = tls is not None
        self.ca_path: Path | None = tls.ca_cert if tls is not None else None
        self._tls_material = tls
        self.username: str | None = None
        self.password: str | None = None
        self._password_file: Path | None = None
        if users:
            self.username, self.password = next(iter(users.items()))
            self._password_file = make_password_file(workdir / "passwd", users.items())
        self.persistence = persistence
        self.extra_config = extra_config
        self.config_path = workdir / "mosquitto.conf"
        self.log: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._write_config()

    # -- config ---------------------------------------------------------------------------
    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            "log_dest stderr",
            "log_type all",
            "log_timestamp true",
            "connection_messages true",
            # Default 1000: past that, QoS 1 messages for a slow subscriber are dropped ("Outgoing
            # messages are being dropped"), which a test or the demo would read as gateway loss.
            "max_queued_messages 0",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.workdir}/")
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user "mosquitto" and then cannot read tmp files.
            lines.append("user root")
        if self._tls_material is not None:
            m = self._tls_material
            lines += [f"cafile {m.ca_cert}", f"certfile {m.server_cert}", f"keyfile {m.server_key}"]
        if self._password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self._password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _read_stderr(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.rstrip("\n")
            self.log.append(line)
            if " running" in line and "mosquitto version" in line:
                ready.set()
        ready.set()  # EOF: the process died; start() checks poll()

    def start(self, timeout_s: float = 10.0) -> Broker:
        """Start (or restart) mosquitto on ``self.port``; returns once it accepts connections."""
        if self.running:
            raise RuntimeError("broker already running")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._start_once(timeout_s)
                return self
            except RuntimeError:
                # Another process may have grabbed our free port before we bound it.
                if attempt + 1 == attempts or not self._port_in_use_failure():
                    raise
                self.port = free_port(self.host)
                self._write_config()
        return self

    def _port_in_use_failure(self) -> bool:
        return any("Address already in use" in line for line in self.log[-10:])

    def _start_once(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        ready = threading.Event()
        self._ready = ready
        proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path), "-v"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._proc = proc
        self._reader = threading.Thread(
            target=self._read_stderr, args=(proc, ready), name=f"mosquitto-{self.port}", daemon=True
        )
        self._reader.start()
        ready.wait(max(0.0, deadline - time.monotonic()))
        if proc.poll() is not None or not ready.is_set():
            self._reap()
            raise RuntimeError(
                f"mosquitto did not start on {self.host}:{self.port} within {timeout_s}s; log:\n"
                + "\n".join(self.log[-20:])
            )
        # Confirm with a connect, still under the same deadline.
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    self._reap()
                    raise RuntimeError(
                        f"mosquitto is not accepting on {self.host}:{self.port}; log:\n"
                        + "\n".join(self.log[-20:])
                    ) from None
                time.sleep(0.02)

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
        self._proc = None
        self._reader = None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Clean shutdown (SIGTERM); no-op if not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)  # a paused broker handles the TERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        self._reap()

    def kill(self) -> None:
        """Abrupt outage (SIGKILL); no-op if not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        self._reap()

    def pause(self) -> None:
        """A hung broker (SIGSTOP): connections stay open, nothing is answered."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Broker:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        kind = "tls" if self.tls else ("auth" if self.username else "plain")
        return f"<Broker {kind} {self.host}:{self.port} {'up' if self.running else 'down'}>"
