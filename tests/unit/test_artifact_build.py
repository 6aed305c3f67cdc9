"""local/artifact.py without Serverless: the bytecode added to the zip, and a build reused
only while its inputs are unchanged. No sockets; `serverless package` is replaced by a fake
that writes a small zip and template, as it would."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from aggregator.sdk import models
from local import artifact

REAL_RUN = subprocess.run
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"


def fake_repo(root: Path) -> Path:
    for name in artifact.INPUT_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    (root / "aggregator" / "base").mkdir(parents=True)
    (root / "aggregator" / "__init__.py").write_text("")
    (root / "aggregator" / "base" / "__init__.py").write_text("VALUE = 1\n")
    (root / "handler.py").write_text("from aggregator.base import VALUE\n\ndef handler(event, context):\n"
                                     "    return VALUE\n")
    return root


def code_sha256(path: Path) -> str:
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


class FakeServerless:
    """Writes what `serverless package --package DIR` writes: the zip (with one dependency
    already compiled, as pip leaves them) and a template whose version carries its hash."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = 0

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if command[:3] != ["npx", "--no-install", "serverless"]:
            return REAL_RUN(command, **kwargs)
        self.runs += 1
        out = Path(command[command.index("--package") + 1])
        out.mkdir(parents=True, exist_ok=True)
        zip_path = out / f"{artifact.SERVICE}.zip"
        with zipfile.ZipFile(zip_path, "w") as archive:
            for path in [self.root / "handler.py", *sorted((self.root / "aggregator").rglob("*.py"))]:
                archive.write(path, str(path.relative_to(self.root)))
            archive.writestr("dep.py", "X = 2\n")
            archive.writestr("__pycache__/dep.cpython-311.pyc", b"already there")
            archive.writestr("py2only.py", "print 'old'\n")
            archive.writestr("botocore/data/endpoints.json", '{"partitions": []}')
            archive.writestr("botocore/data/s3/2006-03-01/service-2.json.gz", gzip.compress(b'{"b": 1, "a": 2}'))
            archive.writestr("botocore/data/ec2/2016-11-15/service-2.json.gz", gzip.compress(b"{}"))
        template = {"Resources": {
            "AggregatorLambdaFunction": {"Type": "AWS::Lambda::Function", "Properties": {"Runtime": RUNTIME}},
            "AggregatorLambdaVersionX": {"Type": "AWS::Lambda::Version",
                                         "Properties": {"CodeSha256": code_sha256(zip_path)}}}}
        (out / "cloudformation-template-update-stack.json").write_text(json.dumps(template))
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeServerless:
    serverless = FakeServerless(fake_repo(tmp_path / "repo"))
    monkeypatch.setattr(subprocess, "run", serverless)
    return serverless


def test_the_zip_gets_bytecode_and_model_pickles_and_the_template_its_hash(
        fake: FakeServerless, tmp_path: Path) -> None:
    built = artifact.package(artifact.HOST_ARCH, build=tmp_path / "build", root=fake.root)
    with zipfile.ZipFile(built.zip_path) as archive:
        names = set(archive.namelist())
        handler_pyc = archive.read("__pycache__/handler.cpython-311.pyc")
        kept = archive.read("__pycache__/dep.cpython-311.pyc")
    assert {"__pycache__/handler.cpython-311.pyc", "aggregator/__pycache__/__init__.cpython-311.pyc",
            "aggregator/base/__pycache__/__init__.cpython-311.pyc"} <= names
    assert kept == b"already there"  # what pip compiled is left as it is
    assert "__pycache__/py2only.cpython-311.pyc" not in names  # does not compile: skipped
    # The models the first invocation's clients parse, pickled beside their JSON; not the others.
    assert {"botocore/data/endpoints.json.pickle", "botocore/data/s3/2006-03-01/service-2.json.gz.pickle"} <= names
    assert "botocore/data/ec2/2016-11-15/service-2.json.gz.pickle" not in names
    loader = models.PickledJSONFileLoader()
    assert list(loader.load_file(str(built.task_root / "botocore/data/s3/2006-03-01/service-2"))) == ["b", "a"]
    flags = int.from_bytes(handler_pyc[4:8], "little")
    assert flags == 0b11  # hash-based, checked against the source at import
    template = json.loads(built.template_path.read_text())
    assert template["Resources"]["AggregatorLambdaVersionX"]["Properties"]["CodeSha256"] == \
        code_sha256(built.zip_path)
    # The twin imports from its .pyc files, which match their sources.
    result = subprocess.run([sys.executable, "-S", "-v", "-c", "import handler"], cwd=built.task_root,
                            env={"PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True, check=True)
    assert "__pycache__/handler.cpython-311.pyc matches" in result.stderr
    assert "aggregator/base/__pycache__/__init__.cpython-311.pyc matches" in result.stderr


def test_a_bytecode_mismatch_with_the_template_runtime_is_refused(fake: FakeServerless, tmp_path: Path) -> None:
    built = artifact.package(artifact.HOST_ARCH, build=tmp_path / "build", root=fake.root)
    template = json.loads(built.template_path.read_text())
    template["Resources"]["AggregatorLambdaFunction"]["Properties"]["Runtime"] = "python3.99"
    built.template_path.write_text(json.dumps(template))
    with pytest.raises(RuntimeError, match=r"python3\.99"):
        artifact.add_precompiled(built)


@pytest.mark.parametrize("change", ["aggregator/base/__init__.py", "requirements.txt", "serverless.yml",
                                    "handler.py", "package.json", "aggregator/new_module.py"])
def test_a_build_is_reused_until_an_input_changes(fake: FakeServerless, tmp_path: Path, change: str) -> None:
    build = tmp_path / "build"
    first = artifact.ensure(artifact.HOST_ARCH, stage="prod", build=build, root=fake.root)
    assert fake.runs == 1 and (first.task_root / "handler.py").exists()
    artifact.ensure(artifact.HOST_ARCH, stage="prod", build=build, root=fake.root)
    assert fake.runs == 1  # unchanged: reused
    (fake.root / "aggregator" / "__pycache__").mkdir(exist_ok=True)
    (fake.root / "aggregator" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"dev bytecode")
    artifact.ensure(artifact.HOST_ARCH, stage="prod", build=build, root=fake.root)
    assert fake.runs == 1  # the development tree's bytecode is not an input
    (fake.root / change).write_text("# changed\n")
    artifact.ensure(artifact.HOST_ARCH, stage="prod", build=build, root=fake.root)
    assert fake.runs == 2


def test_another_stage_or_an_unfinished_build_rebuilds(fake: FakeServerless, tmp_path: Path) -> None:
    build = tmp_path / "build"
    built = artifact.ensure(artifact.HOST_ARCH, stage="prod", build=build, root=fake.root)
    artifact.ensure(artifact.HOST_ARCH, stage="dev", build=build, root=fake.root)
    assert fake.runs == 2
    built.stamp_path.unlink()  # as a build interrupted before its stamp was written
    artifact.ensure(artifact.HOST_ARCH, stage="dev", build=build, root=fake.root)
    assert fake.runs == 3
    (built.task_root / "handler.py").unlink()
    artifact.ensure(artifact.HOST_ARCH, stage="dev", build=build, root=fake.root)
    assert fake.runs == 4
