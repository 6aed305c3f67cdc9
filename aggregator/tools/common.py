"""What every command shares: the exit-status errors, problem lines, the environment's clients.

The commands never build a client themselves: :class:`Environment` asks the factories in
:mod:`aggregator.clients`, lazily, so ``verify`` of a local file needs no variable and
no network at all.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from aggregator.base.settings import ToolSettings

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

    from aggregator.delivery.secret import MinioSecret

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Wrong usage or an input that cannot be read: exit status 2, one line, no traceback."""


class Problems:
    """Problem lines for stderr, one per archive, member or object; exit 1 when there are any."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out
        self.count = 0

    def add(self, line: str) -> None:
        self.count += 1
        out = self._out or sys.stderr
        print(_one_line(line), file=out, flush=True)

    @property
    def exit_status(self) -> int:
        return EXIT_PROBLEM if self.count else EXIT_OK


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


@dataclass
class Environment:
    """Settings and clients, built on first use from the function's own environment."""

    settings: ToolSettings
    _session: Any = None
    _minio: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Environment:
        return cls(settings=ToolSettings.from_env(env))

    def session(self) -> Any:
        if self._session is None:
            from aggregator import clients

            self._session = clients.aws_session(region=self.settings.aws_region)
        return self._session

    def minio_secret(self) -> MinioSecret:
        if "secret" not in self._minio:
            from aggregator import clients
            from aggregator.delivery.secret import MinioSecretProvider

            secret_id = self.settings.require("MINIO_SECRET_ID")
            provider = MinioSecretProvider(clients.secretsmanager_client(self.session()), secret_id)
            self._minio["secret"] = provider.get()
        secret: MinioSecret = self._minio["secret"]
        return secret

    def minio(self) -> S3Client:
        if "client" not in self._minio:
            from aggregator import clients

            self._minio["client"] = clients.minio_client(self.minio_secret(), max_pool=4)
        client: S3Client = self._minio["client"]
        return client

    def source_s3(self) -> S3Client:
        from aggregator import clients

        return clients.source_s3_client(self.session(), max_pool=4)

    def dynamodb(self) -> Any:
        from aggregator import clients

        return clients.dynamodb_client(self.session(), max_pool=4)

    def sqs(self) -> Any:
        from aggregator import clients

        return clients.sqs_client(self.session())


def error_code(error: BaseException) -> str:
    """The service's error code of a botocore ClientError, else the exception's class name."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(error).__name__
