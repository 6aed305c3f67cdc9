"""``moto_server`` with two fixes for DynamoDB: atomic conditional writes, and a
TransactWriteItems that backs up each table once, not once per item.

DynamoDB applies each write, its condition included, atomically. moto serves requests on
several threads and checks a condition and then writes, with nothing in between held: two
concurrent ``PutItem ... attribute_not_exists`` on one key could both succeed, and two
invocations would both believe they hold the claim. Every item write here takes one lock,
which is what DynamoDB guarantees per item (and more).

moto (5.x) deep-copies the whole table for every item of a transaction, to roll back on
failure: a 100-item claim call against a 20,000-item claims table makes 100 copies of the
table, which took seconds per call and 18 GB of memory 3,800 objects into the 20,000-object
load test. One copy per table per call keeps moto's rollback exactly as it is.

Run as ``python -m local.moto_server -H 127.0.0.1 -p PORT`` (moto_server's own arguments).
"""

from __future__ import annotations

import copy
import sys
import threading
from typing import Any

from moto.dynamodb import models
from moto.server import main

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

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
