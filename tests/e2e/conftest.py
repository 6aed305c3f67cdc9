"""The packaged function, as the e2e tests run it."""

from __future__ import annotations

import pytest

from local import artifact


@pytest.fixture(scope="session")
def twin() -> artifact.Artifact:
    """`serverless package --stage prod` for this machine's architecture, unzipped.

    The production stage on purpose: its zip is the one whose every import the tests
    exercise. Only ``--param=architecture`` tells it from the deploy artifact.

    Built into build/ and reused while its inputs are unchanged (local/artifact.py): the
    cold-start benchmark of the same CI run takes this build instead of making its own.
    """
    return artifact.ensure(artifact.HOST_ARCH, stage="prod")
