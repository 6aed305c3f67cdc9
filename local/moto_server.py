"""``moto_server`` with our fixes: for DynamoDB, atomic conditional writes and a
TransactWriteItems that backs up each table once, not once per item; for S3, event
notifications shaped as S3 sends them; for SQS, deletes that cannot lose a message sent
at the same moment.

DynamoDB applies each write, its condition included, atomically. moto serves requests on
several threads and checks a condition and then writes, with nothing in between held: two
concurrent ``PutItem ... attribute_not_exists`` on one key could both succeed, and two
invocations would both believe they hold the claim. Every item write here takes one lock,
which is what DynamoDB guarantees per item (and more).

moto (5.x) deep-copies the whole table for every item of a transaction, to roll back on
failure: a 100-item claim call against a 20,000-item claims table makes 100 copies of the
table, which took seconds per call and 18 GB of memory 3,800 objects into the 20,000-object
load test. One copy per table per call keeps moto's rollback exactly as it is.

moto's S3 notifications carry ``eventTime`` in the server's local time with no zone (the
function reads it as "unknown age" and cannot measure how long an object waited), no
``versionId`` even for a versioned bucket, and no ``sequencer``: two uploads of identical
bytes to one key then have one identity and the second would be taken for a duplicate.
S3 sends an RFC 3339 UTC time with milliseconds, the versionId of a versioned bucket's
object, and a sequencer that grows with each event for a key; so do these.

moto's SQS is slow where the runner waits on it (measured with 400 messages of ~700
bytes in one queue, in-process moto 5.2.1): its clock (``unix_time``) builds two datetimes
per call, ~8 us, and every ``SendMessage`` computes all queue attributes (it reads one,
``ContentBasedDeduplication``), which asks every message whether it is visible and
delayed; every message a ``ReceiveMessage`` returns is checked for retention by computing
all queue attributes again. So a receive of 10 took ~0.47 s and the 400 sends 4 s, and
the runner's pollers spent the batching window waiting for moto, not for messages. Here
the SQS models read ``time.time()`` (the same clock, as moto reads it without freezegun)
and the retention check reads the queue's retention period alone: 5 receives of 10 take
~0.04 s instead of 2.35 s.

moto's server routes every request under one process-wide lock, and to route it lists
moto's package folder (``os.listdir`` and a ``stat`` per entry, ~170 entries) twice and
tries the host against every service's URL patterns: every request of every client
waited in line for that. Both answers never change while the server runs; they are
computed once here (per host name for the second).

moto's SQS ``delete_message`` rebuilds the queue's message list without the queue's lock
and then assigns it back: a message that ``SendMessage`` (or an S3 notification) appends
in between is silently lost. And ``ReceiveMessage`` checks that a message is visible and
then marks it received with nothing held in between, so two pollers could both receive
it (seen: 3,001 successful deletes for 3,000 messages sent by two threads while two
others received and deleted). Delete and receive hold the same lock as the append here;
a long poll's wait releases it (the lock is a Condition's re-entrant lock).

Run as ``python -m local.moto_server -H 127.0.0.1 -p PORT`` (moto_server's own arguments).
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from moto import backends
from moto.core.utils import unix_time as _moto_unix_time
from moto.dynamodb import models
from moto.moto_server import werkzeug_app
from moto.s3 import notifications
from moto.server import main
from moto.sqs import models as sqs_models

_backups = threading.local()  # moto serves requests on several threads


class _CopyOncePerTransaction:
    """Stands in for the ``copy`` module inside moto's DynamoDB models."""

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        tables: dict[int, Any] | None = getattr(_backups, "tables", None)
        if tables is None or not isinstance(value, models.Table):
            return copy.deepcopy(value, memo)
        if id(value) not in tables:
            tables[id(value)] = copy.deepcopy(value)
        return tables[id(value)]

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


_transact_write_items = models.DynamoDBBackend.transact_write_items


def _transact_once(self: models.DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    _backups.tables = {}
    try:
        _transact_write_items(self, transact_items)
    finally:
        _backups.tables = None


_writes = threading.RLock()  # re-entered: a transaction writes its items through put_item


def _atomic(write: Any) -> Any:
    def locked(self: models.DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
        with _writes:
            return write(self, *args, **kwargs)
    return locked


models.copy = _CopyOncePerTransaction()  # type: ignore[assignment]
models.DynamoDBBackend.transact_write_items = _atomic(_transact_once)  # type: ignore[method-assign]
for _name in ("put_item", "delete_item", "update_item"):
    setattr(models.DynamoDBBackend, _name, _atomic(getattr(models.DynamoDBBackend, _name)))

_get_s3_event = notifications._get_s3_event
_sequence_lock = threading.Lock()
_last_sequencer = 0


def _next_sequencer() -> str:
    """Upper-case hex, strictly growing (S3 only promises growth per key; this is stricter)."""
    global _last_sequencer
    with _sequence_lock:
        _last_sequencer = max(time.time_ns(), _last_sequencer + 1)
        return f"{_last_sequencer:018X}"


def _s3_event(event_name: str, bucket: Any, key: Any, notification_id: str) -> dict[str, list[dict[str, Any]]]:
    event = _get_s3_event(event_name, bucket, key, notification_id)
    for record in event["Records"]:
        now = datetime.now(UTC)
        record["eventTime"] = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        obj = record["s3"]["object"]
        if bucket.is_versioned and getattr(key, "version_id", None):
            obj["versionId"] = key.version_id
        obj["sequencer"] = _next_sequencer()
    return event


def _delete_message(self: sqs_models.Queue, receipt_handle: str) -> None:
    with self._messages_lock:
        _queue_delete_message(self, receipt_handle)


def _receive_message(self: sqs_models.SQSBackend, queue_name: str, *args: Any, **kwargs: Any) -> Any:
    with self.get_queue(queue_name)._messages_lock:
        return _backend_receive_message(self, queue_name, *args, **kwargs)


def _unix_time(dt: datetime | None = None) -> float:
    return time.time() if dt is None else _moto_unix_time(dt)


def _unix_time_millis(dt: datetime | None = None) -> float:
    return time.time() * 1000.0 if dt is None else _moto_unix_time(dt) * 1000.0


def _retained(self: sqs_models.SQSBackend, queue_name: str, message: sqs_models.Message) -> bool:
    retention_s = int(self.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
    return retention_s + message.sent_timestamp / 1000 > time.time()  # type: ignore[operator]


_moto_modules = tuple(backends.list_of_moto_modules())
_backend_for_host = werkzeug_app.DomainDispatcherApplication.get_backend_for_host
_backends_by_host: dict[str | None, Any] = {}


def _cached_backend_for_host(self: werkzeug_app.DomainDispatcherApplication, host: str | None) -> Any:
    # Called under the dispatcher's own lock: no second lock needed.
    if host not in _backends_by_host:
        _backends_by_host[host] = _backend_for_host(self, host)
    return _backends_by_host[host]


_queue_delete_message = sqs_models.Queue.delete_message
_backend_receive_message = sqs_models.SQSBackend.receive_message
backends.list_of_moto_modules = lambda: _moto_modules
werkzeug_app.DomainDispatcherApplication.get_backend_for_host = _cached_backend_for_host  # type: ignore[method-assign]
notifications._get_s3_event = _s3_event
sqs_models.Queue.delete_message = _delete_message  # type: ignore[method-assign]
sqs_models.SQSBackend.receive_message = _receive_message  # type: ignore[method-assign]
setattr(sqs_models, "unix_time", _unix_time)  # noqa: B010 - names moto's models imported for themselves
setattr(sqs_models, "unix_time_millis", _unix_time_millis)  # noqa: B010
sqs_models.SQSBackend.is_message_valid_based_on_retention_period = _retained  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
