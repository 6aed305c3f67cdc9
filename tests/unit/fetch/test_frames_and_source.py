"""Pipe framing, and building a SourceConfig from a botocore client."""

from __future__ import annotations

import os
import pickle
import threading
from datetime import UTC, datetime

import botocore.session
from botocore.config import Config

from aggregator.base.objects import ObjectHead
from aggregator.fetch import frames, source_config_from_client
from aggregator.fetch.source import SourceConfig

HEAD = ObjectHead(size=3, last_modified=datetime(2026, 1, 2, tzinfo=UTC), etag="e", version_id=None)


def test_frames_round_trip_through_a_pipe_in_any_split() -> None:
    sent = [
        (frames.FETCHED, frames.head_meta(0, HEAD), b"abc"),
        (frames.MISSING, 1, b""),
        (frames.STREAM, frames.head_meta(2, HEAD), b""),
        (frames.CHUNK, None, os.urandom(300_000)),
        (frames.STREAM_END, None, b""),
        (frames.FAILED, (3, "boom"), b""),
        (frames.DONE, 0.25, b""),
    ]
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        for kind, meta, body in sent:
            frames.write_all(write_fd, frames.encode(kind, meta, body))
        os.close(write_fd)

    thread = threading.Thread(target=writer)
    thread.start()
    reader = frames.FrameReader(read_fd)
    got = []
    while not reader.eof or reader.has_frame():
        frame = reader.next()
        if frame is None:
            reader.fill()
            continue
        got.append(frame)
    thread.join()
    os.close(read_fd)
    assert got == sent
    assert frames.head_from_meta(got[0][1]) == HEAD


def test_a_partial_frame_waits_for_its_end() -> None:
    data = b"".join(frames.encode(frames.FETCHED, (5, HEAD), b"body"))
    read_fd, write_fd = os.pipe()
    reader = frames.FrameReader(read_fd)
    for byte in data[:-1]:
        os.write(write_fd, bytes([byte]))
        reader.fill()
        assert not reader.has_frame() and reader.next() is None
    os.write(write_fd, data[-1:])
    reader.fill()
    assert reader.next() == (frames.FETCHED, (5, HEAD), b"body")
    os.close(read_fd)
    os.close(write_fd)


def test_source_config_pickles_for_child_processes() -> None:
    source = SourceConfig("https://s3.eu-west-2.amazonaws.com", "eu-west-2", "a", "s", "t", verify="/ca.pem")
    assert pickle.loads(pickle.dumps(source)) == source


def test_source_config_from_a_botocore_client() -> None:
    session = botocore.session.get_session()
    client = session.create_client(
        "s3", region_name="eu-west-2", endpoint_url="http://127.0.0.1:4566",
        aws_access_key_id="AKID", aws_secret_access_key="SECRET", aws_session_token="TOKEN",
        config=Config(connect_timeout=3, read_timeout=7, s3={"addressing_style": "virtual"}),
    )
    source = source_config_from_client(client, verify=True)
    assert source == SourceConfig("http://127.0.0.1:4566", "eu-west-2", "AKID", "SECRET", "TOKEN",
                                  addressing_style="virtual", connect_timeout=3.0, read_timeout=7.0)
