"""The deploy artifact and its twin: ``python -m local.artifact [--stage STAGE]``.

One ``serverless package`` per architecture, with the same requirements, patterns and
plugin; only ``--param=architecture=...`` differs:

- ``build/arm64/`` holds the zip that ``serverless deploy --package build/arm64`` uploads;
- ``build/<host arch>/`` its twin for this machine, unzipped into ``unzipped/``: the task
  root that the local runner, ``make demo`` and the e2e tests run (local/sandbox.py).

On an arm64 host the two are one.

**Bytecode**: a cold start compiles nothing. pip writes hash-checked .pyc files for the
dependencies (SOURCE_DATE_EPOCH, see serverless.yml), but the Serverless packaging leaves
out the project's own (its patterns drop ``__pycache__``, which may hold the development
tree's stale files) and the python-requirements plugin drops the top-level ``__pycache__``
(six, typing_extensions). :func:`add_bytecode` compiles what is missing, hash-checked
(valid whatever the zip's timestamps, checked against the source at import), appends it
to the zip and updates the template's ``CodeSha256`` to the new zip. ~70 ms of every cold
start (benchmarks/test_cold_start.py). In the same pass it adds pickles of the botocore
JSON files that building the function's clients parses (:mod:`aggregator.sdk.models`):
~35 ms more.

**Built once**: a build whose inputs (requirements, serverless.yml, package.json and its
lock, handler.py, aggregator/, this module) and options (stage, architecture, extra flags)
have not changed since it was made is reused, not rebuilt (:func:`ensure`): the e2e
fixture and the cold-start benchmark share one build per CI run. The digest of the
inputs is written last, so an interrupted build is never taken for a finished one.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import platform
import py_compile
import shutil
import subprocess
import sys
import tempfile
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
# What a build is made of: a change to any of them (or to the options) means a rebuild.
INPUT_FILES = ("requirements.txt", "serverless.yml", "package.json", "package-lock.json", "handler.py",
               "local/artifact.py")
INPUT_TREES = ("aggregator",)
STAMP = "inputs.sha256"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# botocore's JSON files that the first invocation's clients read (S3 twice: source and
# MinIO), pickled into the zip. Any other file is parsed as JSON, as before.
_BOTOCORE_DATA = "botocore/data/"
PICKLED_TOP_LEVEL = ("endpoints", "partitions", "sdk-default-configuration")
PICKLED_SERVICES = ("s3", "dynamodb", "secretsmanager")
PICKLED_TYPES = ("service-2", "endpoint-rule-set-1")


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

    @property
    def stamp_path(self) -> Path:
        return self.directory / STAMP


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


def inputs_digest(arch: str, *, stage: str, extra: tuple[str, ...] = (), root: Path = REPO_ROOT) -> str:
    """SHA-256 of everything a build depends on: input files' contents and the options."""
    digest = hashlib.sha256(json.dumps({"arch": arch, "stage": stage, "extra": list(extra),
                                        "python": list(sys.version_info[:2])}).encode())
    files = [root / name for name in INPUT_FILES]
    for tree in INPUT_TREES:
        files += sorted(p for p in (root / tree).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"(missing)")
        digest.update(b"\0")
    return digest.hexdigest()


def up_to_date(built: Artifact, digest: str) -> bool:
    complete = built.zip_path.exists() and built.template_path.exists() and (
        built.arch != HOST_ARCH or (built.task_root / "handler.py").exists())
    return complete and built.stamp_path.exists() and built.stamp_path.read_text().strip() == digest


def ensure(arch: str, *, stage: str = "dev", build: Path = BUILD, extra: tuple[str, ...] = (),
           root: Path = REPO_ROOT) -> Artifact:
    """The build for these options: reused when its inputs have not changed, else made anew."""
    out = artifact(arch, build=build)
    digest = inputs_digest(arch, stage=stage, extra=extra, root=root)
    if up_to_date(out, digest):
        return out
    package(arch, stage=stage, build=build, extra=extra, root=root)
    out.stamp_path.write_text(digest + "\n")
    return out


def ensure_apart(arch: str, *, stage: str = "dev", build: Path = BUILD, extra: tuple[str, ...] = ()) -> Artifact:
    """:func:`ensure`, packaging a copy of the inputs rather than the repository itself.

    Serverless and its python-requirements plugin work in ``.serverless/`` beside
    serverless.yml, so two packagings of one tree at once would mix their requirements;
    one of a copy may run beside one of the tree (the e2e tests build the deploy artifact
    while the twin builds). The copy holds the inputs (:data:`INPUT_FILES`,
    :data:`INPUT_TREES`), so the zip is the tree's while the package patterns let in
    handler.py and aggregator/ only (tests/e2e/test_serverless_config.py checks the twin,
    packaged from the tree, for anything more).
    """
    out = artifact(arch, build=build)
    digest = inputs_digest(arch, stage=stage, extra=extra)
    if up_to_date(out, digest):
        return out
    with tempfile.TemporaryDirectory(prefix="sls-service-") as scratch:
        root = Path(scratch)
        for name in INPUT_FILES:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
        for tree in INPUT_TREES:
            shutil.copytree(REPO_ROOT / tree, root / tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (root / "node_modules").symlink_to(REPO_ROOT / "node_modules")
        package(arch, stage=stage, build=build, extra=extra, root=root)
    out.stamp_path.write_text(digest + "\n")
    return out


def package(arch: str, *, stage: str = "dev", build: Path = BUILD, extra: tuple[str, ...] = (),
            root: Path = REPO_ROOT) -> Artifact:
    """``serverless package`` for one architecture, bytecode added; unzipped too when it is
    the host's. Always builds (see :func:`ensure`)."""
    out = artifact(arch, build=build)
    shutil.rmtree(out.directory, ignore_errors=True)
    out.directory.parent.mkdir(parents=True, exist_ok=True)
    command = ["npx", "--no-install", "serverless", "package", "--stage", stage,
               f"--param=architecture={arch}", "--package", str(out.directory), *extra]
    result = subprocess.run(command, cwd=root, env=packaging_env(), capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    add_precompiled(out)
    if arch == HOST_ARCH:
        unzip(out)
    return out


def add_precompiled(built: Artifact) -> list[str]:
    """Compile every module of the zip that has no .pyc beside it, and pickle the botocore
    JSON files a first invocation parses; the names added.

    Hash-checked .pyc for this interpreter, which must be the template's runtime (the
    bytecode format changes with the minor version). The Lambda version resource's
    ``CodeSha256`` is then set to the new zip's, as Serverless computed it for the old one.
    """
    from aggregator.sdk import models

    runtime = _template_runtime(built)
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if runtime is not None and runtime != here:
        raise RuntimeError(f"the template names {runtime}; this interpreter ({here}) cannot compile its bytecode")
    old_hash = _code_sha256(built.zip_path)
    added: list[str] = []
    with zipfile.ZipFile(built.zip_path, "a", compression=zipfile.ZIP_DEFLATED) as archive, \
            tempfile.TemporaryDirectory(prefix="pyc-") as scratch:
        names = set(archive.namelist())
        for name in sorted(names):
            if name.endswith(".py"):
                cached = importlib.util.cache_from_source(name)
                if cached in names:
                    continue
                compiled = _compile(name, archive.read(name), scratch=Path(scratch))
                if compiled is None:
                    continue  # not importable by this runtime anyway (another Python's file)
                _append(archive, cached, compiled)
                added.append(cached)
            elif _pickled(name) and name + models.SUFFIX not in names:
                _append(archive, name + models.SUFFIX, models.dump(name, archive.read(name)))
                added.append(name + models.SUFFIX)
    if added:
        _replace_code_sha256(built.template_path, old_hash, _code_sha256(built.zip_path))
    return added


def _compile(name: str, source: bytes, *, scratch: Path) -> bytes | None:
    path = scratch / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(source)
    target = path.with_suffix(".pyc")
    try:
        py_compile.compile(str(path), cfile=str(target), dfile=name, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    except py_compile.PyCompileError:
        return None
    return target.read_bytes()


def _pickled(name: str) -> bool:
    if not name.startswith(_BOTOCORE_DATA) or not name.endswith((".json", ".json.gz")):
        return False
    parts = name[len(_BOTOCORE_DATA):].removesuffix(".gz").removesuffix(".json").split("/")
    if len(parts) == 1:
        return parts[0] in PICKLED_TOP_LEVEL
    return len(parts) == 3 and parts[0] in PICKLED_SERVICES and parts[2] in PICKLED_TYPES


def _append(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def _template_runtime(built: Artifact) -> str | None:
    if not built.template_path.exists():
        return None
    resources = json.loads(built.template_path.read_text()).get("Resources", {})
    for resource in resources.values():
        if resource.get("Type") == "AWS::Lambda::Function":
            runtime = resource.get("Properties", {}).get("Runtime")
            return str(runtime) if runtime else None
    return None


def _code_sha256(path: Path) -> str:
    """What Lambda (and CloudFormation's ``CodeSha256``) calls a zip's hash."""
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def _replace_code_sha256(template_path: Path, old: str, new: str) -> None:
    if not template_path.exists():
        return
    template = json.loads(template_path.read_text())
    for resource in template.get("Resources", {}).values():
        properties = resource.get("Properties", {})
        if resource.get("Type") == "AWS::Lambda::Version" and properties.get("CodeSha256") == old:
            properties["CodeSha256"] = new
    template_path.write_text(json.dumps(template, indent=2))


def unzip(built: Artifact) -> Path:
    shutil.rmtree(built.task_root, ignore_errors=True)
    with zipfile.ZipFile(built.zip_path) as archive:
        archive.extractall(built.task_root)
        for info in archive.infolist():  # extractall drops the modes (.so files need none, scripts might)
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                (built.task_root / info.filename).chmod(mode & 0o755 | 0o444)
    return built.task_root


def package_all(*, stage: str = "dev", build: Path = BUILD, force: bool = False) -> list[Artifact]:
    """The deploy artifact, then its host twin (one build on an arm64 host); each reused
    when up to date unless ``force``."""
    if force:
        for arch in dict.fromkeys([LAMBDA_ARCH, HOST_ARCH]):
            artifact(arch, build=build).stamp_path.unlink(missing_ok=True)
    return [ensure(arch, stage=stage, build=build) for arch in dict.fromkeys([LAMBDA_ARCH, HOST_ARCH])]


def sizes(built: Artifact) -> tuple[int, int]:
    """(zip bytes, unzipped bytes), as Lambda counts them against 50 MB and 250 MB."""
    with zipfile.ZipFile(built.zip_path) as archive:
        unzipped = sum(info.file_size for info in archive.infolist())
    return built.zip_path.stat().st_size, unzipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.artifact", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs have not changed")
    args = parser.parse_args(argv)
    for built in package_all(stage=args.stage, force=args.force):
        zipped, unzipped = sizes(built)
        print(f"{built.zip_path.relative_to(REPO_ROOT)}: {zipped / 2**20:.1f} MiB zipped, "
              f"{unzipped / 2**20:.1f} MiB unzipped (Lambda: 50 MB, 250 MB)"
              + (f"; task root {built.task_root.relative_to(REPO_ROOT)}" if built.arch == HOST_ARCH else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
