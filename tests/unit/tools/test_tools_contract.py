"""Operator commands (CONTRACT.md section 9) on archives that differ from what the writer
produced, and backfill's rate: each test names the sentence it holds the code to."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.tools.__main__ import main
from tests.unit.tools.conftest import build

OBJECTS = [("src", "a.txt", b"alpha " * 100), ("src", "dir/b.bin", bytes(range(256)) * 40)]


@pytest.mark.parametrize("command", ["verify", "extract"])
def test_an_uncompressed_archive_missing_its_last_bytes_is_truncated(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    command: str) -> None:
    path = build(tmp_path, OBJECTS, codec="none")
    data = path.read_bytes()
    assert len(data) % 10240 == 0  # the writer pads to a whole record: anything shorter was cut
    path.write_bytes(data[:-100])
    argv = [command, str(path)] + ([str(tmp_path / "out")] if command == "extract" else [])
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert status == 1


@pytest.mark.parametrize("command", ["verify", "extract"])
def test_a_changed_byte_in_an_uncompressed_archives_padding_is_tampering(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str],
                                                                          command: str) -> None:
    path = build(tmp_path, OBJECTS, codec="none")
    data = bytearray(path.read_bytes())
    first_size = len(OBJECTS[0][2])  # 600 bytes: its data ends inside its second block
    position = 512 + first_size + 10  # after the header block and the data: padding
    assert data[position] == 0
    data[position] = 0x41
    path.write_bytes(bytes(data))
    argv = [command, str(path)] + ([str(tmp_path / "out")] if command == "extract" else [])
    status = main(argv)
    assert "Traceback" not in capsys.readouterr().err
    assert status == 1


def test_backfill_never_sends_more_than_the_rate_within_any_second(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    from typing import Any

    from aggregator.tools import backfill
    from aggregator.tools.common import Environment

    now = [1000.0]
    sent: list[tuple[float, int]] = []

    class FakeSqs:
        def send_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            sent.append((now[0], len(Entries)))
            return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def sleep(seconds: float) -> None:
        now[0] += seconds

    class FakeClockLimiter(backfill.RateLimiter):
        def __init__(self, rate: float) -> None:
            super().__init__(rate, clock=lambda: now[0], sleep=sleep)

    monkeypatch.setattr(backfill, "RateLimiter", FakeClockLimiter)
    monkeypatch.setattr("aggregator.tools.backfill.time.monotonic", lambda: now[0])
    monkeypatch.setattr(Environment, "sqs", lambda self: FakeSqs())
    report = tmp_path / "r.jsonl"
    report.write_text("".join(json.dumps({"bucket": "src", "key": f"k{i}", "version_id": None, "etag": f"e{i}",
                                          "state": "never_claimed", "archive": None, "size": 1}) + "\n"
                              for i in range(45)))
    assert main(["backfill", "--report", str(report), "--queue-url", "http://q", "--apply", "--rate", "15"]) == 0
    assert sum(n for _, n in sent) == 45
    busiest = max(sum(n for t, n in sent if start <= t < start + 1.0) for start, _ in sent)
    assert busiest <= 15, f"{busiest} messages sent within one second: {sent}"
