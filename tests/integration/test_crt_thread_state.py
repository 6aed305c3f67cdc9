"""The CRT transport keeps one Python thread state on its event-loop thread while a
connection is open, and gives it back when the connection shuts down (threadstate).

What shows the state was kept: a ``threading.local`` lives in the thread state, so a
value one response callback stores there is still there in the next one only if CPython
did not destroy and recreate the state in between (it does, for every callback, without
the hold).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import boto3
import pytest

from aggregator.fetch import SourceConfig, threadstate
from aggregator.fetch.protocol import GetTarget
from aggregator.fetch.transport import Connection, CrtTransport, Stream
from aggregator.sdk.endpoints import Origin
from tests.support.servers import SeaweedS3

pytestmark = [pytest.mark.servers, pytest.mark.timeout(60)]


class Recorder:
    """A handler that records, per response, the thread and what the thread-local held."""

    def __init__(self, local: threading.local) -> None:
        self.local = local
        self.seen: list[tuple[int, int | None]] = []  # (thread id, value found in the local)
        self.done: Future[BaseException | None] = Future()
        self.body = b""

    def on_response(self, stream: Stream, status: int, headers: list[tuple[str, str]]) -> None:
        found = getattr(self.local, "mark", None)
        self.local.mark = len(self.seen) + 1
        self.seen.append((threading.get_ident(), found))

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk

    def on_complete(self, error: BaseException | None) -> None:
        self.done.set_result(error)


def connect(transport: CrtTransport, origin: Origin) -> Connection:
    got: Future[Connection] = Future()

    def on_done(connection: Connection | None, error: BaseException | None) -> None:
        if error is not None:
            got.set_exception(error)
        else:
            got.set_result(connection)  # type: ignore[arg-type]

    transport.connect(origin, on_done)
    return got.result(timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    event = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return True
        event.wait(0.02)
    return condition()


@pytest.fixture(scope="module")
def object_path(seaweed: SeaweedS3) -> str:
    client: Any = boto3.client("s3", endpoint_url=seaweed.endpoint_url, region_name="eu-west-2",
                               aws_access_key_id=seaweed.access_key, aws_secret_access_key=seaweed.secret_key)
    bucket = f"ts-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="one", Body=b"body bytes")
    return f"/{bucket}/one"


def test_the_hold_is_used_only_on_the_cpython_versions_it_was_checked_on() -> None:
    # Checked on CPython 3.11 (3.11.7 here, Lambda's python3.11). A new interpreter must be
    # checked (threadstate's docstring says what for) and added to CHECKED_ON deliberately.
    assert threadstate.CHECKED_ON == ((3, 11),)
    assert threadstate.supported() == (sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11))


@pytest.mark.parametrize("hold", [True, False], ids=["hold-on", "hold-off"])
def test_the_loop_thread_keeps_its_state_while_a_connection_is_open(seaweed: SeaweedS3, object_path: str,
                                                                    hold: bool) -> None:
    # SeaweedFS keeps connections alive (moto's server closes each after one response).
    source = SourceConfig(seaweed.endpoint_url, "eu-west-2", seaweed.access_key, seaweed.secret_key, None)
    source = dataclasses.replace(source, thread_state_hold=hold)
    transport = CrtTransport(source, window=1 << 20, event_loop_threads=1)
    local = threading.local()
    host = source.endpoint_url.split("//", 1)[1]
    try:
        connection = connect(transport, Origin(False, host.split(":")[0], int(host.split(":")[1])))
        recorder = Recorder(local)
        target = GetTarget(Origin(False, host.split(":")[0], int(host.split(":")[1])), host, object_path, "eu-west-2")
        for _ in range(3):
            before = recorder.done
            connection.request(target, [("host", host)], recorder)
            assert before.result(timeout=10) is None
            recorder.done = Future()
        assert recorder.body == b"body bytes" * 3
        threads = {thread for thread, _ in recorder.seen}
        assert len(threads) == 1 and threading.get_ident() not in threads  # the CRT's loop thread
        if not hold:  # plain awscrt: a fresh thread state for every callback
            assert [found for _, found in recorder.seen] == [None, None, None]
            assert transport.thread_states_held == 0
            connection.close()
            return
        # The second and third responses found what the one before stored: same thread state.
        assert [found for _, found in recorder.seen] == [None, 1, 2]
        assert transport.thread_states_held == 1

        connection.close()
        assert wait_until(lambda: transport.thread_states_held == 0), "the hold was not given back"
    finally:
        transport.close()
