"""Throw-away PostgreSQL, Redis and Prometheus servers from the system packages, each in its own
temporary directory on a free loopback port, stopped and removed by `stop()` (or `with`).

The test suite (tests/conftest.py) and the benchmarks start these, so `make test` needs no
server set up by hand; `make system-deps` installs the packages (scripts/system-deps.sh).
Only the processes started here are stopped, by their own handle.

PostgreSQL refuses to run as root: as root the data directory is handed to the `postgres`
user the Debian package creates, and initdb and the server run as that user.
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayfin.cluster import free_port

INSTALL_HINT = "run `make system-deps` (apt-get install -y postgresql redis-server prometheus)"


class ServerError(RuntimeError):
    """A local server could not be found or started; the message says which and how to fix it."""


def _wait(predicate, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise ServerError(f"{what} not ready after {timeout_s:g}s\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl are: $RAYFIN_PG_BINDIR, the newest /usr/lib/postgresql/N/bin
    (Debian keeps them off PATH), or PATH."""
    if os.environ.get("RAYFIN_PG_BINDIR"):
        return Path(os.environ["RAYFIN_PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise ServerError(f"PostgreSQL's initdb not found; {INSTALL_HINT}")


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary directory. Password (scram-sha-256) authentication
    over TCP, so clients exercise the same path as against a real server; `password` is random."""

    durable: bool = True          # fsync as in production; False only where speed matters more
    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    user: str = "postgres"
    dir: Path | None = None
    _as: dict[str, Any] = field(default_factory=dict, repr=False)
    start_s: float = 0.0

    def start(self) -> "PostgresServer":
        t0 = time.monotonic()
        bindir = postgres_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="rayfin-pg-"))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerError("running as root and there is no `postgres` user to run PostgreSQL as; "
                                  + INSTALL_HINT) from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        data = self.dir / "data"
        self._run([str(bindir / "initdb"), "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
        pwfile.unlink()
        self.port = self.port or free_port()
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.dir / "pg.log"),
                   "-w", "-t", "60", "start"])
        self.start_s = time.monotonic() - t0
        return self

    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir, **self._as)
        if proc.returncode != 0:
            raise ServerError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")

    def url(self, database: str = "postgres") -> str:
        """A URL with no password in it (pass `password` separately, as rayfin's config does)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg  # lazy: only the PostgreSQL server needs the driver

        with psycopg.connect(self.url(), password=self.password, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.dir is None:
            return
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            try:
                self._run([str(postgres_bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"])
            except ServerError:
                self._run([str(postgres_bindir() / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RedisServer:
    """redis-server with no persistence, for Ray's GCS fault tolerance (RAY_REDIS_ADDRESS)."""

    port: int = 0
    dir: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServerError(f"redis-server not found; {INSTALL_HINT}")
        self.dir = Path(tempfile.mkdtemp(prefix="rayfin-redis-"))
        self.port = self.port or free_port()
        log = self.dir / "redis.log"
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
                                      "--logfile", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: self.ping() or self.proc.poll() is not None, 20, "redis-server", log)
        if self.proc.poll() is not None:
            raise ServerError(f"redis-server exited with {self.proc.returncode}: "
                              f"{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")
        return self

    def command(self, *args: str) -> bytes:
        """One Redis command over RESP; returns the raw reply."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload.encode())
            return s.recv(1 << 16)

    def ping(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class PrometheusServer:
    """The system Prometheus scraping the given `host:port` targets every `scrape_interval_s`."""

    targets: list[str]
    scrape_interval_s: float = 1.0
    port: int = 0
    dir: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PrometheusServer":
        exe = shutil.which("prometheus")
        if exe is None:
            raise ServerError(f"prometheus not found; {INSTALL_HINT}")
        self.dir = Path(tempfile.mkdtemp(prefix="rayfin-prom-"))
        self.port = self.port or free_port()
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        cfg = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
               "scrape_configs": [{"job_name": "rayfin", "static_configs": [{"targets": self.targets}]}]}
        (self.dir / "prometheus.yml").write_text(json.dumps(cfg))   # JSON is YAML
        log = self.dir / "prometheus.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([exe, f"--config.file={self.dir / 'prometheus.yml'}",
                                          f"--storage.tsdb.path={self.dir / 'data'}",
                                          f"--web.listen-address=127.0.0.1:{self.port}"],
                                         stdout=out, stderr=subprocess.STDOUT)
        _wait(lambda: self._ready() or self.proc.poll() is not None, 30, "prometheus", log)
        if self.proc.poll() is not None:
            raise ServerError(f"prometheus exited with {self.proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; returns the decoded body (also for a 400: its error says why)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}") | {"http_status": exc.code}

    def query(self, promql: str) -> dict[str, Any]:
        return self.api("query", query=promql)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
