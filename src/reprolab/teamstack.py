"""A team's shared stack, for a trial on one machine: PostgreSQL (the Optuna studies and the
MLflow store) and an MLflow tracking server that proxies the artifacts into a folder, plus a
DVC remote folder; all under one folder (``make team-stack``, ``python -m
reprolab.teamstack``). It prints the three settings each workspace sets, and stops both
servers on Ctrl-C. PostgreSQL trusts every local connection (no password): a trial, not a
production setup (docs/guide.md, "A team's stack").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from reprolab.core.errors import ReprolabError

DATABASES = ("mlflow", "optuna")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class StackError(ReprolabError):
    """A server of the stack cannot be started (not installed, a port taken, a bad folder)."""


def postgres_bindir(root: Path = Path("/usr/lib/postgresql")) -> Path:
    """Where initdb and pg_ctl are: on the PATH, else Debian's ``<root>/<version>/bin``."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(root.glob("*/bin/pg_ctl"), key=lambda p: _version(p.parents[1].name))
    if not candidates:
        raise StackError(
            "PostgreSQL is not installed (no pg_ctl on the PATH nor under "
            f"{root}/*/bin): apt-get install postgresql"
        )
    return candidates[-1].parent


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def check_port(host: str, port: int, what: str) -> None:
    """Raise StackError when ``host:port`` is taken (a server already answers there)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise StackError(
                f"{what}: port {port} on {host} is taken ({err.strerror}): stop what uses it "
                "or choose another port"
            ) from None


def _as_server_user() -> tuple[list[str], tuple[int, int] | None]:
    """PostgreSQL refuses to run as root: then it runs as the ``postgres`` user."""
    if os.geteuid() != 0:
        return [], None
    import pwd

    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "running as root, and there is no `postgres` user to run PostgreSQL as "
            "(the Debian package creates it): run as another user"
        ) from None
    return ["runuser", "-u", "postgres", "--"], (owner.pw_uid, owner.pw_gid)


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        tail = log.read_text()[-300:].strip() if log is not None and log.exists() else ""
        detail = (result.stderr.strip() or result.stdout.strip())[-300:]
        raise StackError(
            f"{what} failed (exit {result.returncode}): {detail}" + (f"; {tail}" if tail else "")
        )


@contextlib.contextmanager
def postgres(
    folder: Path,
    port: int,
    databases: Sequence[str] = DATABASES,
    host: str = "127.0.0.1",
    durable: bool = True,
) -> Iterator[str]:
    """A PostgreSQL server whose data lives in ``folder/data`` (created by initdb on first
    use, trust authentication, user ``postgres``), listening on ``host:port``, holding
    ``databases``; yields its SQLAlchemy URL without a database name, stops it on exit.
    ``durable=False`` turns fsync off (a throwaway server: the tests')."""
    check_port(host, port, "PostgreSQL")
    bindir = postgres_bindir()
    prefix, owner = _as_server_user()
    folder.mkdir(parents=True, exist_ok=True)
    if owner is not None:  # its data, log and socket are the postgres user's
        os.chown(folder, *owner)
        if subprocess.run([*prefix, "test", "-w", str(folder)], timeout=30).returncode:
            raise StackError(
                f"the postgres user cannot write {folder} (a folder above it is closed to "
                "other users, e.g. /root): give a --folder it can reach (/srv/..., /tmp/...)"
            )
    data, log = folder / "data", folder / "postgres.log"
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    if not (data / "PG_VERSION").is_file():
        initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        _run([*prefix, *initdb], f"initdb {data}")
        if host not in LOOPBACK:  # the team's machines on this network connect too
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")
    options = f"-p {port} -k {folder} -c listen_addresses={host}"
    options += "" if durable else " -c fsync=off"
    start = [*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "60", "start"]
    _run(start, f"PostgreSQL on port {port}", log)
    try:
        for name in databases:
            _create_database(bindir, host, port, name)
        yield f"postgresql+psycopg2://postgres@{_url_host(host)}:{port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)


def _create_database(bindir: Path, host: str, port: int, name: str) -> None:
    address = ["-h", host, "-p", str(port), "-U", "postgres"]
    query = f"SELECT 1 FROM pg_database WHERE datname='{name}'"
    exists = subprocess.run(
        [str(bindir / "psql"), *address, "-tAc", query],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if exists.stdout.strip() != "1":
        _run([str(bindir / "createdb"), *address, name], f"createdb {name}")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def mlflow_command(backend: str, artifacts: Path, host: str, port: int) -> list[str]:
    """``mlflow server`` on ``backend`` (an SQLAlchemy URL), its artifacts proxied into the
    folder ``artifacts`` (clients log and read them as ``mlflow-artifacts:`` URIs)."""
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow) if mlflow.is_file() else "mlflow", "server"]
    command += ["--backend-store-uri", backend, "--serve-artifacts"]
    command += ["--artifacts-destination", str(artifacts.resolve())]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    if host not in LOOPBACK:  # MLflow 3 answers only the Host names it is told to
        command += ["--allowed-hosts", "*"]
    return command


@contextlib.contextmanager
def mlflow_server(
    backend: str, artifacts: Path, host: str, port: int, log: Path, timeout: float = 120
) -> Iterator[str]:
    """A running ``mlflow server`` (mlflow_command); yields its URL once ``/health`` answers,
    stops it (its whole process group) on exit."""
    check_port(host, port, "the MLflow server")
    artifacts.mkdir(parents=True, exist_ok=True)
    url = f"http://{_url_host(host)}:{port}"
    with open(log, "ab") as out:
        server = subprocess.Popen(
            mlflow_command(backend, artifacts, host, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(server, f"{url}/health", log, timeout)
        yield url
    finally:
        stop_group(server)


def _wait_healthy(server: subprocess.Popen, health: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            tail = log.read_text()[-500:].strip()
            raise StackError(f"mlflow server exited {server.returncode} (see {log}): {tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=5) as answer:
            if answer.status == 200:
                return
        if time.monotonic() > deadline:
            raise StackError(f"mlflow server: {health} did not answer in {timeout:.0f} s ({log})")
        time.sleep(0.5)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group of ``process`` (a server and its workers), SIGKILL after 5 s
    (the MLflow server has committed all it holds to its database and folder; once its worker
    is done, its parent could otherwise linger 20 s and more)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def settings(tracking: str, database: str, remote: Path) -> list[str]:
    """The three settings a workspace sets to use the stack."""
    return [
        f"export MLFLOW_TRACKING_URI={tracking}",
        f"dvc exp run -S tune.storage={database}/optuna   # or tune.storage in params.yaml",
        f"dvc remote add -d shared {remote.resolve()}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reprolab.teamstack", description=__doc__)
    parser.add_argument("--folder", type=Path, default=Path(".team-stack"))
    parser.add_argument("--host", default="127.0.0.1", help="the address both servers use")
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port")
    parser.add_argument("--pg-port", type=int, default=5432, help="PostgreSQL's port")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    remote = folder / "dvc-remote"
    # Ctrl-C and SIGTERM both end the wait below; the servers are stopped on the way out.
    # (SIGINT too: a shell that starts this in the background leaves it ignored.)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        check_port(args.host, args.port, "the MLflow server")  # before PostgreSQL starts
        with postgres(folder / "postgres", args.pg_port, host=args.host) as database:
            remote.mkdir(exist_ok=True)
            log = folder / "mlflow-server.log"
            artifacts = folder / "mlartifacts"
            with mlflow_server(f"{database}/mlflow", artifacts, args.host, args.port, log) as url:
                print(f"team stack up: MLflow {url}, PostgreSQL {database}, in {folder}")
                if args.host in ("0.0.0.0", "::"):  # listening everywhere: named by this host
                    name = socket.getfqdn()
                    url, database = (u.replace(_url_host(args.host), name) for u in (url, database))
                print("each workspace sets:")
                print("\n".join(f"  {line}" for line in settings(url, database, remote)))
                print("Ctrl-C stops both servers", flush=True)
                signal.pause()
    except StackError as err:
        print(f"team-stack: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("team stack stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
