"""The deploy artifact and its twin: ``python -m local.artifact [--stage STAGE]``.

One ``serverless package`` per architecture, with the same requirements, patterns and
plugin; only ``--param=architecture=...`` differs:

- ``build/arm64/`` holds the zip that ``serverless deploy --package build/arm64`` uploads;
- ``build/<host arch>/`` its twin for this machine, unzipped into ``unzipped/``: the task
  root that the local runner, ``make demo`` and the e2e tests run (local/sandbox.py).

On an arm64 host the two are one. pip writes hash-checked .pyc files into the zip
(SOURCE_DATE_EPOCH, see serverless.yml), so a cold start compiles nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD = REPO_ROOT / "build"
SERVICE = "s3-minio-aggregator"
LAMBDA_ARCH = "arm64"
HOST_ARCH = {"aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
# Any fixed time: its presence makes py_compile write hash-checked .pyc files.
SOURCE_DATE_EPOCH = "315532800"


@dataclass(frozen=True)
class Artifact:
    arch: str
    directory: Path

    @property
    def zip_path(self) -> Path:
        return self.directory / f"{SERVICE}.zip"

    @property
    def task_root(self) -> Path:
        """The zip's contents, as Lambda unpacks them into /var/task."""
        return self.directory / "unzipped"

    @property
    def template_path(self) -> Path:
        return self.directory / "cloudformation-template-update-stack.json"


def artifact(arch: str, *, build: Path = BUILD) -> Artifact:
    return Artifact(arch, build / arch)


def twin(*, build: Path = BUILD) -> Artifact:
    """The host-architecture build that runs here."""
    return artifact(HOST_ARCH, build=build)


def packaging_env() -> dict[str, str]:
    """No credentials, no profile, no endpoint: packaging must not need AWS at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, SLS_TELEMETRY_DISABLED="1",
               SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    env.setdefault("SLS_PYTHON_BIN", str(REPO_ROOT / ".venv" / "bin" / "python"))
    if not Path(env["SLS_PYTHON_BIN"]).exists():
        env["SLS_PYTHON_BIN"] = sys.executable
    return env


def package(arch: str, *, stage: str = "dev", build: Path = BUILD, extra: tuple[str, ...] = ()) -> Artifact:
    """``serverless package`` for one architecture; unzipped too when it is the host's."""
    out = artifact(arch, build=build)
    shutil.rmtree(out.directory, ignore_errors=True)
    out.directory.parent.mkdir(parents=True, exist_ok=True)
    command = ["npx", "--no-install", "serverless", "package", "--stage", stage,
               f"--param=architecture={arch}", "--package", str(out.directory), *extra]
    result = subprocess.run(command, cwd=REPO_ROOT, env=packaging_env(), capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    if arch == HOST_ARCH:
        unzip(out)
    return out


def unzip(built: Artifact) -> Path:
    shutil.rmtree(built.task_root, ignore_errors=True)
    with zipfile.ZipFile(built.zip_path) as archive:
        archive.extractall(built.task_root)
        for info in archive.infolist():  # extractall drops the modes (.so files need none, scripts might)
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                (built.task_root / info.filename).chmod(mode & 0o755 | 0o444)
    return built.task_root


def package_all(*, stage: str = "dev", build: Path = BUILD) -> list[Artifact]:
    """The deploy artifact, then its host twin (one build on an arm64 host)."""
    return [package(arch, stage=stage, build=build) for arch in dict.fromkeys([LAMBDA_ARCH, HOST_ARCH])]


def sizes(built: Artifact) -> tuple[int, int]:
    """(zip bytes, unzipped bytes), as Lambda counts them against 50 MB and 250 MB."""
    with zipfile.ZipFile(built.zip_path) as archive:
        unzipped = sum(info.file_size for info in archive.infolist())
    return built.zip_path.stat().st_size, unzipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.artifact", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args(argv)
    for built in package_all(stage=args.stage):
        zipped, unzipped = sizes(built)
        print(f"{built.zip_path.relative_to(REPO_ROOT)}: {zipped / 2**20:.1f} MiB zipped, "
              f"{unzipped / 2**20:.1f} MiB unzipped (Lambda: 50 MB, 250 MB)"
              + (f"; task root {built.task_root.relative_to(REPO_ROOT)}" if built.arch == HOST_ARCH else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
