"""Real stores for the team-mode tests: a throwaway PostgreSQL cluster made with Debian's binaries,
and ``mlflow server`` processes, all on 127.0.0.1 with free ports, stopped when the session ends.

The team server is started with the very command the README's "Team server" section gives (only
its host, port, paths and passwords are replaced), so the tests prove what a new user follows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent  # the venv's bin folder: mlflow, nbtrack
# Placeholders the README uses, and what the tests put in their place.
DB_HOST = "localhost:5432"
SERVER_HOME = "/srv/mlflow"


def free_port() -> int:
    """A TCP port nobody listens on now (on 127.0.0.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """Folder of PostgreSQL's server binaries (initdb, pg_ctl): Debian keeps them off PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class PostgresCluster:
    """A temporary PostgreSQL cluster: ``initdb`` + ``pg_ctl start`` as a non-root user.

    initdb refuses to run as root, so under root the cluster belongs to the ``postgres`` user
    that Debian's package creates. Clients log in as ``mlflow`` with a password (scram-sha-256).
    """

    user = "mlflow"

    def __init__(self, bindir: Path, password: str) -> None:
        self.bindir = bindir
        self.password = password
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="nbtrack-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.os_user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        done = subprocess.run([str(self.bindir / args[0]), *args[1:]], user=self.os_user,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip() or done.stdout.strip()}"
                               f"\n{_tail(self.log)}")

    def start(self) -> PostgresCluster:
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password + "\n")
        if self.os_user:
            shutil.chown(self.folder, self.os_user)
            shutil.chown(pwfile, self.os_user)
        self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                  "--no-instructions")
        pwfile.unlink()
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}")
        return self

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user,
                             password=self.password, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D",
                            str(self.data)], user=self.os_user, capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """One ``mlflow server`` process group; ``url`` once :meth:`start` has seen it healthy."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.command = command
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}):\n"
                                   f"{_tail(self.log)}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout}s:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            # uvicorn waits for its background job workers; the tests' stores are thrown away.
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def server_env(**extra: str) -> dict[str, str]:
    """The environment a server starts with: ours, minus any client-side tracking settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_EXPERIMENT_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def sqlite_http_server(folder: Path) -> MlflowServer:
    """``mlflow server`` on a SQLite file; clients write artifacts straight to its folder."""
    port = free_port()
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri",
               f"sqlite:///{folder / 'mlflow.db'}", "--no-serve-artifacts",
               "--default-artifact-root", str(folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return MlflowServer(command, server_env(), port, folder / "server.log")


def readme_section(title: str = "Team server") -> str:
    """The README's section ``## title``, up to the next ``## `` heading."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def readme_blocks(language: str) -> list[str]:
    """The fenced code blocks of that language in the Team server section."""
    return re.findall(rf"```{language}\n(.*?)```", readme_section(), flags=re.S)


def team_server_process(folder: Path, cluster: PostgresCluster, admin_password: str
                        ) -> MlflowServer:
    """The README's team server: its auth ini and its start command, with test values."""
    ini = next(b for b in readme_blocks("ini") if "database_uri" in b)
    (folder / "basic_auth.ini").write_text(ini.replace(DB_HOST, f"127.0.0.1:{cluster.port}")
                                          .replace(SERVER_HOME, str(folder)))
    start = next(b for b in readme_blocks("bash") if "mlflow server" in b)
    port = free_port()
    command = (start.replace(DB_HOST, f"127.0.0.1:{cluster.port}")
               .replace(SERVER_HOME, str(folder))
               .replace("--host 0.0.0.0", "--host 127.0.0.1")
               # Two cores shared by the whole suite: one worker is plenty for the tests.
               .replace("--port 5000", f"--port {port} --workers 1"))
    env = server_env(PGPASSWORD=cluster.password, MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
                     MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-key-" + "x" * 16)
    # The README's lines set these from placeholders; the test's values win.
    command = re.sub(r"^\s*(export )?(PGPASSWORD|MLFLOW_AUTH_ADMIN_PASSWORD|"
                     r"MLFLOW_FLASK_SERVER_SECRET_KEY)=\S+.*$", "", command, flags=re.M)
    return MlflowServer(["bash", "-euc", command], env, port, folder / "server.log")


# -- fixtures (conftest.py imports them) -----------------------------------------------------

import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import pytest  # noqa: E402
from needs import missing  # noqa: E402

STORE_KINDS = ("sqlite", "http-sqlite", "http-postgres")
ADMIN_PASSWORD = "admin password, 12+ characters"
# The README's example logins, used as they are written there.
USERS = {"alice": "alice's password, 12+ characters", "bob": "bob's password, 12+ characters"}


@dataclass
class TeamServer:
    """The README's team server: PostgreSQL backend, proxied artifacts, basic-auth."""

    url: str
    server: MlflowServer
    users: dict[str, str] = field(default_factory=dict)

    def auth(self, monkeypatch):
        """The basic-auth admin client (the README's ``get_app_client``), logged in as admin."""
        from mlflow.server import get_app_client

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        return get_app_client("basic-auth", tracking_uri=self.url)

    def login(self, monkeypatch, user: str) -> None:
        """Be ``user`` from now on in this process (MLflow reads these on every request)."""
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", self.users[user])


@pytest.fixture(scope="session")
def postgres_cluster():
    """A running PostgreSQL cluster with the databases the README creates; skips without one
    (fails under ``NBTRACK_REQUIRE_ALL=1``)."""
    bindir = postgres_bin()
    if bindir is None:
        missing("PostgreSQL is not installed (no initdb): scripts/install_postgres.sh "
                "installs Debian's package; the PostgreSQL store cases skip until then")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no 'postgres' user to own the cluster "
                    "(initdb refuses root); install Debian's postgresql package")
    cluster = PostgresCluster(bindir, password="db password " + uuid.uuid4().hex[:8])
    try:
        cluster.start()
        for name in ("mlflow", "mlflow_auth"):
            cluster.create_database(name)
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def http_sqlite_server(tmp_path_factory):
    """``mlflow server`` over HTTP on a SQLite file, for the whole session."""
    server = sqlite_http_server(tmp_path_factory.mktemp("http-sqlite")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def team_server(tmp_path_factory, postgres_cluster):
    """The README's team server started with the README's command, and the README's users."""
    folder = tmp_path_factory.mktemp("team-server")
    server = team_server_process(folder, postgres_cluster, ADMIN_PASSWORD).start()
    team = TeamServer(server.url, server)
    try:
        with pytest.MonkeyPatch.context() as patch:
            auth = team.auth(patch)
            for line in readme_blocks("python")[0].splitlines():
                if ".create_user(" in line:
                    user = re.search(r'create_user\("(\w+)", "(.*?)"\)', line)
                    auth.create_user(user.group(1), user.group(2))
                    team.users[user.group(1)] = user.group(2)
        assert team.users == USERS, "the README's example users changed: update USERS"
    except Exception:
        server.stop()
        raise
    yield team
    server.stop()


@dataclass
class Store:
    """One store of the matrix, already in ``MLFLOW_TRACKING_URI``."""

    kind: str
    uri: str
    team: TeamServer | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def name(self, base: str) -> str:
        """An experiment or model name of this test only (server stores outlive a test)."""
        return f"{base}-{self.tag}"


@pytest.fixture(params=STORE_KINDS)
def any_store(request, tmp_path, monkeypatch):
    """The test's store: a local SQLite file, ``mlflow server`` on SQLite, or the team server
    (PostgreSQL, proxied artifacts, basic-auth, logged in as alice)."""
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("NBTRACK_JOURNAL_DIR", str(tmp_path / "journal"))
    home = tmp_path / "home"  # no ~/.mlflow/credentials of the host
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for variable in ("JPY_SESSION_NAME", "PAPERMILL_INPUT_PATH", "NBTRACK_BATCH",
                     "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    team = None
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    elif request.param == "http-sqlite":
        uri = request.getfixturevalue("http_sqlite_server").url
    else:
        team = request.getfixturevalue("team_server")
        team.login(monkeypatch, "alice")
        uri = team.url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return Store(request.param, uri, team)


# Ray's processes bind the loopback address only with this (by default they bind every
# interface), and never phone home.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
RAY_START_SECONDS = 180


@contextlib.contextmanager
def local_ray_cluster(folder: Path, cpus: int = 2):
    """A Ray head node on 127.0.0.1 with ``cpus`` CPUs (so that many worker processes run tasks
    at once); yields its address. ``ray start --block`` runs in a session of its own, so stopping
    it stops exactly the processes it started, not another Ray on this machine (``ray stop``
    would stop them all).
    """
    port = free_port()
    log = folder / "ray-start.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
             f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **RAY_ENV},
            start_new_session=True)
    try:
        deadline = time.monotonic() + RAY_START_SECONDS
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited {head.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray start took over {RAY_START_SECONDS} s")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # with --block, it stops its cluster on SIGTERM
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # anything of its session still there
        head.wait()
