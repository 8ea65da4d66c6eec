"""Real servers for the tests, started on free loopback ports and stopped by pid.

Without a server binary a test is skipped with the reason, except under ``CI=true``, where a
missing server fails the run: a skipped test is not a passed test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(1000):
        port = free_port()
        if port + 10000 <= 65535 and _is_free(port + 10000):
            return port
        candidate = 20000 + port % 30000
        if _is_free(candidate) and _is_free(candidate + 10000):
            return candidate
    raise RuntimeError("no free port pair for a redis cluster node")


def need_binary(name: str) -> str:
    """The binary's path; skip the test without it (fail under CI=true)."""
    candidates = [Path(sys.executable).parent / name, shutil.which(name)]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    reason = f"{name} is not installed (Debian: apt-get install redis-server)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class RedisServer:
    """One redis-server on 127.0.0.1; ``stop()``/``start()`` keep its port and data dir."""

    directory: Path
    appendonly: bool = False
    cluster: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if self.cluster:
            self.port = free_cluster_port()

    def start(self) -> RedisServer:
        binary = need_binary("redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.directory), "--daemonize", "no", "--protected-mode", "yes"]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


def create_cluster(nodes: list[RedisServer]) -> None:
    cli = need_binary("redis-cli")
    addresses = [f"127.0.0.1:{node.port}" for node in nodes]
    subprocess.run(
        [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [
            subprocess.run(
                [cli, "-p", str(node.port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
            for node in nodes
        ]
        if all("cluster_state:ok" in state for state in states):
            return
        time.sleep(0.1)
    raise RuntimeError("the redis cluster did not reach cluster_state:ok")


@dataclass
class NxServer:
    """The nx-27017 MongoDB wire-protocol server, in memory (``persistent``: in a SQLite file
    in ``directory``, so that ``stop()``/``start()`` keep the data, as a restarted mongod does)."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    persistent: bool = False

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> NxServer:
        binary = need_binary("nx-27017")
        self.directory.mkdir(parents=True, exist_ok=True)
        db = str(self.directory / "nx.db") if self.persistent else "memory"
        args = [binary, "--db", db, "-p", str(self.port), "--host", "127.0.0.1"]
        args += ["--log-file", str(self.directory / "nx.log")]
        args += ["--pid-file", str(self.directory / "nx.pid")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, "nx-27017", timeout=60)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


#: The superuser password of the PostgreSQL servers the tests start (password auth on TCP,
#: so the credential tests see a real password in the URL).
POSTGRES_PASSWORD = "s3cret-Pg-pw"


def postgres_binaries() -> Path | None:
    """The directory with initdb and pg_ctl: Debian's /usr/lib/postgresql/<v>/bin, newest
    first, else wherever PATH has them."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in found:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


def postgres_env_url() -> str | None:
    """An existing server named by the environment (never the machine's own on 5432)."""
    return os.environ.get("POSTGRES_URL") or os.environ.get("CHAT_PG_URL")


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of its own in a temporary directory, on a free loopback port.

    PostgreSQL refuses to run as root: as root, the cluster belongs to ``nobody`` and every
    server command runs through ``runuser``. ``stop()``/``start()`` keep port and data.
    """

    port: int = field(default_factory=free_port)
    directory: Path | None = None
    bin: Path | None = None
    user: str | None = None
    external: str | None = None
    #: Keep every acknowledged commit across a crash (``pg_ctl stop -m immediate``): the
    #: restart tests need it; the others run faster with fsync and synchronous_commit off.
    durable: bool = False

    @property
    def url(self) -> str:
        if self.external is not None:
            return self.external
        return f"postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        assert self.bin is not None
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        # cwd: the server's own directory. CI's clone sits in a 0700 root directory, which the
        # unprivileged user could not even stand in.
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=self.directory
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}\n{result.stderr}")

    def init(self) -> PostgresServer:
        external = postgres_env_url()
        if external:
            self.external = external
            return self
        self.bin = postgres_binaries()
        if self.bin is None:
            reason = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI=true and {reason}")
            pytest.skip(reason)
        import tempfile

        # Not under pytest's tmp dir: that is 0700 root's, and the server runs as nobody.
        self.directory = Path(tempfile.mkdtemp(prefix="chat-pg-"))
        (self.directory / "sock").mkdir()
        pwfile = self.directory / "pw"
        pwfile.write_text(POSTGRES_PASSWORD + "\n")
        if os.geteuid() == 0:
            self.user = "nobody"
            for path in [self.directory, self.directory / "sock", pwfile]:
                os.chown(path, 65534, 65534)
        self._run(
            "initdb",
            "-D",
            str(self.directory / "data"),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        return self.start()

    def start(self) -> PostgresServer:
        if self.external is not None:
            return self
        assert self.directory is not None
        options = (
            f"-p {self.port} -k {self.directory / 'sock'} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.directory / "data"),
            "-o",
            options,
            "-l",
            str(self.directory / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.external is not None or self.directory is None:
            return
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if self.external is not None or self.directory is None:
            return
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
