"""The packaged function, as the e2e tests run it."""

from __future__ import annotations

import pytest

from local import artifact


@pytest.fixture(scope="session")
def twin(tmp_path_factory: pytest.TempPathFactory) -> artifact.Artifact:
    """`serverless package --stage prod` for this machine's architecture, unzipped.

    The production stage on purpose: its zip is the one whose every import the tests
    exercise. Only ``--param=architecture`` tells it from the deploy artifact.
    """
    return artifact.package(artifact.HOST_ARCH, stage="prod", build=tmp_path_factory.mktemp("build"))
