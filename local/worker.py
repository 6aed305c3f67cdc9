"""What one execution environment is made of, as Lambda's Python runtime builds it.

- **The interpreter**: a fresh CPython of the runtime's version, started with ``-S``, so
  nothing from a virtualenv or the system's site-packages is on ``sys.path``.
- **The runtime's packages**: a directory holding only ``awslambdaric`` (the runtime
  interface client of AWS's base images) and what it needs, copied from this
  interpreter's installation (:func:`runtime_packages`). Lambda's own copy of boto3 is
  deliberately not there: the zip brings the SDK it was tested with.
- **The task root**: the unzipped artifact (``LAMBDA_TASK_ROOT``, the working directory,
  first on ``PYTHONPATH``), read-only as far as bytecode goes.
- **The bootstrap**: ``python -S -m awslambdaric HANDLER``, which imports the handler
  (the init phase) and then serves invocations from ``AWS_LAMBDA_RUNTIME_API``
  (local/runtime_api.py).

A task root that is the repository itself (the development tree, not an artifact) also
gets this interpreter's site-packages, after the task root: handy for quick runs, but
only a run from the artifact (``make package``, ``build/<arch>/unzipped``) shows what
Lambda will run.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_CLIENT = "awslambdaric"
# The caller's variables a sandbox must not inherit: SDK and tooling settings (the
# function gets exactly the configured environment, so it never reaches real AWS by
# accident) and anything that would put the caller's packages on sys.path.
SCRUBBED_PREFIXES = ("AWS_", "POWERTOOLS_", "_HANDLER", "LAMBDA_", "PYTHON", "VIRTUAL_ENV", "_X_AMZN_")


def interpreter() -> str:
    """The base interpreter of this one (not the venv's launcher), same version."""
    return getattr(sys, "_base_executable", None) or sys.executable


def bootstrap_command(handler: str) -> list[str]:
    return [interpreter(), "-S", "-m", RUNTIME_CLIENT, handler]


def _requirement_names(dist: importlib.metadata.Distribution) -> list[str]:
    names = []
    for requirement in dist.requires or []:
        if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
            continue
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        if match:
            names.append(match.group(0))
    return names


def _closure(name: str) -> list[importlib.metadata.Distribution]:
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key not in seen:
            seen[key] = dist
            todo.extend(_requirement_names(dist))
    return list(seen.values())


def runtime_packages(build: Path = REPO_ROOT / "build") -> Path:
    """A directory with only the runtime client and its dependencies (made once per version set)."""
    dists = _closure(RUNTIME_CLIENT)
    tag = "-".join(sorted(f"{d.metadata['Name']}-{d.version}" for d in dists))
    target = build / "lambda-runtime" / f"py{sys.version_info.major}{sys.version_info.minor}-{tag}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        for dist in dists:
            for file in dist.files or []:
                source = Path(str(dist.locate_file(file)))
                if file.parts[0] == ".." or "__pycache__" in file.parts or not source.is_file():
                    continue  # console scripts live outside site-packages; bytecode is rebuilt
                destination = staging / file
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
        try:
            staging.rename(target)
        except OSError:  # another sandbox made it first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def site_packages() -> list[str]:
    """This interpreter's site-packages: for a task root that is the development tree only."""
    return list(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))


def python_path(task_root: Path, runtime: Path) -> str:
    entries = [str(task_root), str(runtime)]
    if task_root.resolve() == REPO_ROOT:
        entries += site_packages()
    return os.pathsep.join(entries)


def inherited_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
