"""The packaged function, as the e2e tests run and read it."""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from local import artifact

# The deploy artifact that tests/e2e/test_serverless_config.py reads: its own build
# directory, so that a test run never replaces what `make package` left in build/arm64.
DEPLOY_STAGE = "dev"
DEPLOY_BUILD = artifact.BUILD / "e2e"


@functools.cache
def _builds() -> tuple[Future[artifact.Artifact], Future[artifact.Artifact]]:
    """(twin, deploy artifact), each reused while its inputs are unchanged, else built: the
    two side by side (a packaging is ~30 s of mostly one core, Serverless zipping the
    requirements), the deploy artifact from a copy of the inputs (artifact.ensure_apart).
    A test waits for its own build only, and fails only if that one does."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="e2e-build")
    builds = (pool.submit(artifact.ensure, artifact.HOST_ARCH, stage="prod"),
              pool.submit(artifact.ensure_apart, artifact.LAMBDA_ARCH, stage=DEPLOY_STAGE, build=DEPLOY_BUILD))
    pool.shutdown(wait=False)
    return builds


@pytest.fixture(scope="session")
def twin() -> artifact.Artifact:
    """`serverless package --stage prod` for this machine's architecture, unzipped.

    The production stage on purpose: its zip is the one whose every import the tests
    exercise. Only ``--param=architecture`` tells it from the deploy artifact.

    Built into build/ and reused while its inputs are unchanged (local/artifact.py): the
    cold-start benchmark of the same CI run takes this build instead of making its own.
    """
    return _builds()[0].result()


@pytest.fixture(scope="session")
def deploy_artifact() -> artifact.Artifact:
    """`serverless package --stage dev` for Lambda's architecture (arm64), bytecode added, as
    `make package` builds build/arm64: the zip and template that get deployed."""
    return _builds()[1].result()
