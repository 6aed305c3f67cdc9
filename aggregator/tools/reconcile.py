"""``reconcile --bucket B [--prefix P] [--report FILE]``: is every object version archived?

For each object version in the landing bucket (ListObjectVersions when versioning is or
was on, else ListObjectsV2) one JSON line: ``bucket``, ``key``, ``version_id``, ``etag``,
``state`` and ``archive``, plus ``size`` and ``last_modified`` (what backfill needs).

* ``archived``: a claim names an archive (``ArchiveKey``) that exists in MinIO and whose
  manifest lists this very version (same bucket and key, and the same version id, or for
  an unversioned object the same eTag);
* ``in_progress``: there is a claim, but its archive does not (yet) hold the object
  (``lease_expired`` says whether its holder's lease has passed: then only a redelivery
  or a backfill of that object finishes it);
* ``never_claimed``: no claim, and no published archive's manifest lists it; ``backfill``
  sends these.

A claim lives for ``IDEMPOTENCY_TTL_SECONDS`` (DynamoDB's TTL then deletes it), so an object
archived long ago has none. Before calling an object without a claim ``never_claimed``, the
manifests of the archives that can hold it are read: an archive's key starts with the hour
it was created in (``{ARCHIVE_PREFIX}/YYYY/MM/DD/HH/``, UTC), which is after the object's
LastModified. Every hour from there to now is read, not only the claim TTL's worth: the
function refuses events older than the TTL, so an archive made later than that holds an
object backfilled by this very runbook, and missing it would backfill the object twice.
The sidecars of those hours are listed and read once per run, lazily (only when an object
without a claim is met), into an index identity -> archive keys; an archive counts only when
it exists or its published marker does (a sidecar alone was never published).
``--archive-window-hours`` bounds the hours read after each upload, at that risk.

Only ``ObjectID``, ``ArchiveKey`` and ``LeaseUntil`` of a claim are read: whether an object
is archived is decided by the archive itself, not by any state the claim records.

Finding the claims, cheaply (eventually consistent reads: a claim written during the
listing may be missed, which reports an object as not archived, never the reverse):

* a versioned object's claim id is :func:`aggregator.base.names.object_id` of its
  (bucket, key, versionId), exactly as the function computes it, so claims are fetched by
  key with BatchGetItem, 100 at a time (0.5 read unit per item of up to 4 KB);
* an unversioned object's claim id ends in its eTag *and the sequencer of the event that
  named it*, which no listing shows. So does a versioned object's when its event named no
  versionId (moto's notifications name none; S3's always do). Guessing is impossible, so
  the claim table is read once with a Scan and those claims are matched by (bucket, key,
  eTag). A Scan is billed on the bytes it reads (0.5 unit per 4 KB, not per item), about
  1/20 of a unit per claim: the cheaper read per object anyway, but proportional to the
  whole table. It runs only when the listing holds an unversioned object or a versioned
  one not found by its version id (``--no-scan`` skips the latter, for a large table fed
  only by S3's own notifications). Two uploads of the same bytes to one unversioned key
  have one eTag: the current object then counts as archived when either was.

Read units are DynamoDB's own figure (``ReturnConsumedCapacity=TOTAL``). They are also
computed by DynamoDB's documented rule from the items read, and that figure is used when
the server reports none and shown next to the reported one when the two differ (moto
charges a full unit per item, as for strongly consistent reads).

An archive's manifest is read once per archive key: first the small sidecar object
``_manifests/{ArchiveKey}.json`` next to it, else the archive itself, streamed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

from aggregator.archive.errors import ArchiveReadError
from aggregator.archive.manifest import read_manifest
from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from aggregator.delivery.publish import SIDECAR_PREFIX, published_key, sidecar_key
from aggregator.tools.archives import codec_of
from aggregator.tools.common import EXIT_OK, Environment, Problems, UsageError, error_code
from aggregator.tools.progress import Progress

BATCH_GET_LIMIT = 100
_SIDECAR_READERS = 4  # the MinIO client's pool
_EVENTUAL_UNIT = 0.5
_READ_UNIT_BYTES = 4096
_UNPROCESSED_ATTEMPTS = 8
STATES = ("archived", "in_progress", "never_claimed")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("reconcile", help="is every object version of a landing bucket archived?",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", required=True, help="the landing bucket")
    parser.add_argument("--prefix", default="", help="only keys under this prefix")
    parser.add_argument("--since", type=_moment, help="only versions last modified at or after (ISO 8601, UTC)")
    parser.add_argument("--until", type=_moment, help="only versions last modified before (ISO 8601, UTC)")
    parser.add_argument("--report", help="write the JSON lines here instead of stdout")
    parser.add_argument("--no-scan", action="store_true",
                        help="never Scan the claims for a versioned object not found by its version id "
                             "(cheaper on a large table when every event carries a versionId)")
    parser.add_argument("--archive-window-hours", type=_hours, default=None,
                        help="for an object without a claim, read the manifests of archives created up to this many "
                             "hours after its upload (default: up to now; fewer hours miss a backfill made later)")
    parser.set_defaults(run=run)


def _hours(text: str) -> timedelta:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 24 * 366 * 20:
        raise argparse.ArgumentTypeError("must be from 0 to 175680 (20 years)")
    return timedelta(hours=value)


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Version:
    bucket: str
    key: str
    version_id: str | None
    etag: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class Claim:
    object_id: str
    archive_key: str | None
    lease_until: float | None


@dataclass
class ReadUnits:
    """DynamoDB read units: as the server reports them, and as DynamoDB's documented rule
    computes them (kept both: a local emulator may report none, or a figure of its own)."""

    reported: float = 0.0
    computed: float = 0.0
    unreported_calls: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    items: int = 0

    @property
    def total(self) -> float:
        return self.computed if self.unreported_calls else self.reported

    def add(self, reported: float | None, computed: float) -> None:
        self.computed += computed
        if reported is None:
            self.unreported_calls += 1
        else:
            self.reported += reported

    def describe(self) -> str:
        rule = "eventually consistent, 0.5 unit per 4 KB"
        if self.unreported_calls:
            source = f"computed by DynamoDB's rule ({rule}): the server reported none"
        elif abs(self.reported - self.computed) > 1e-9:
            source = f"reported by the server; DynamoDB's rule ({rule}) gives {self.computed:g}"
        else:
            source = "reported by DynamoDB"
        calls = ", ".join(f"{n} {name}" for name, n in sorted(self.calls.items())) or "no calls"
        return f"{self.total:g} read units ({source}); {calls}, {self.items} claims read"


def run(args: argparse.Namespace, env: Environment, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    table = env.settings.require("IDEMPOTENCY_TABLE_NAME")
    s3, dynamodb = env.source_s3(), env.dynamodb()
    progress = Progress("reconcile")
    units = ReadUnits()
    claims = ClaimFinder(dynamodb, table, units, scan_versioned=not args.no_scan)
    now = time.time()
    index = ArchiveIndex(env, now=datetime.fromtimestamp(now, UTC), window=args.archive_window_hours)
    problems = Problems()
    counts: Counter[str] = Counter()
    report: TextIO = _open_report(args.report) if args.report else out
    try:
        versions = _filtered(list_versions(s3, args.bucket, args.prefix, on_page=progress.listed),
                             since=args.since, until=args.until)
        for chunk in _chunks(versions, BATCH_GET_LIMIT):
            found = claims.find(chunk)
            for version in chunk:
                line = classify(version, found.get(version, []), index, now=now)
                counts[line["state"]] += 1
                report.write(json.dumps(line) + "\n")
                if line["state"] != "archived":
                    expired = " (lease expired)" if line.get("lease_expired") else ""
                    problems.add(f"{_name(version)}: {line['state']}{expired}")
            progress.checked(len(chunk))
        report.flush()
    finally:
        progress.done()
        if report is not out:
            report.close()
    for finding in index.problems:
        problems.add(finding)
    total = sum(counts.values())
    where = f"s3://{args.bucket}/{args.prefix}"
    print(f"reconcile {where}: {total} object versions: "
          + ", ".join(f"{counts[state]} {state}" for state in STATES), file=sys.stderr)
    print(f"  claims: {units.describe()}", file=sys.stderr)
    print(f"  archives: {index.describe()}", file=sys.stderr, flush=True)
    return problems.exit_status if total else EXIT_OK


def _open_report(path: str) -> TextIO:
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot write the report: {e.strerror or e}") from e


def _name(version: Version) -> str:
    suffix = f" (version {version.version_id})" if version.version_id else f" (eTag {version.etag})"
    return f"s3://{version.bucket}/{version.key}{suffix}"


# -- listing ------------------------------------------------------------------------------

def list_versions(s3: Any, bucket: str, prefix: str, *, on_page: Callable[[int], None] = lambda n: None,
                  ) -> Iterator[Version]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
        if status in ("Enabled", "Suspended"):
            pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                listed = page.get("Versions", [])
                on_page(len(listed))
                for item in listed:
                    version = item.get("VersionId")
                    yield _version(bucket, item, None if version in (None, "", "null") else version)
        else:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                listed = page.get("Contents", [])
                on_page(len(listed))
                for item in listed:
                    yield _version(bucket, item, None)
    except (ClientError, BotoCoreError) as e:
        raise UsageError(f"s3://{bucket}/{prefix}: cannot list: {error_code(e)}") from e


def _version(bucket: str, item: dict[str, Any], version_id: str | None) -> Version:
    return Version(bucket=bucket, key=item["Key"], version_id=version_id, etag=str(item.get("ETag", "")).strip('"'),
                   size=int(item.get("Size", 0)), last_modified=item["LastModified"])


def _filtered(versions: Iterable[Version], *, since: datetime | None, until: datetime | None) -> Iterator[Version]:
    for version in versions:
        if since is not None and version.last_modified < since:
            continue
        if until is not None and version.last_modified >= until:
            continue
        yield version


def _chunks(items: Iterable[Version], size: int) -> Iterator[list[Version]]:
    chunk: list[Version] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- claims -------------------------------------------------------------------------------

def claim_id(version: Version) -> str:
    """The claim id the function computes for this version (versioned objects only)."""
    return object_id(ObjectRef(bucket=version.bucket, key=version.key, size=version.size, etag=version.etag,
                               version_id=version.version_id, sequencer=None))


class ClaimFinder:
    def __init__(self, client: Any, table: str, units: ReadUnits, *, scan_versioned: bool = True,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self._scan = scan_versioned
        self._table = table
        self._units = units
        self._sleep = sleep
        self._by_etag: dict[tuple[str, str, str], list[Claim]] | None = None

    def find(self, versions: list[Version]) -> dict[Version, list[Claim]]:
        found: dict[Version, list[Claim]] = {}
        by_id = {claim_id(v): v for v in versions if v.version_id}
        for oid, claim in self._batch_get(list(by_id)).items():
            found[by_id[oid]] = [claim]
        # Unversioned objects, and versioned ones whose event named no versionId (then the
        # function keyed the claim by eTag and sequencer): by (bucket, key, eTag).
        rest = [v for v in versions if v not in found and (self._scan or not v.version_id)]
        if rest:
            index = self._scan_index()
            for version in rest:
                found[version] = index.get((version.bucket, version.key, version.etag), [])
        return found

    def _batch_get(self, ids: list[str]) -> dict[str, Claim]:
        claims: dict[str, Claim] = {}
        pending = [{"ObjectID": {"S": oid}} for oid in ids]
        attempt = 0
        while pending:
            request = {"RequestItems": {self._table: {"Keys": pending, "ConsistentRead": False}},
                       "ReturnConsumedCapacity": "TOTAL"}
            response = self._call("BatchGetItem", self._client.batch_get_item, request)
            items = response.get("Responses", {}).get(self._table, [])
            consumed = response.get("ConsumedCapacity")
            reported = sum(float(c.get("CapacityUnits", 0)) for c in consumed) if consumed else None
            unprocessed = response.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
            # Each item rounded up to 4 KB on its own; a key with no item costs the minimum.
            done = len(pending) - len(unprocessed)
            computed = sum(_units(item_size(item)) for item in items) + _EVENTUAL_UNIT * (done - len(items))
            self._units.add(reported, computed)
            self._units.items += len(items)
            for item in items:
                claim = _claim(item)
                claims[claim.object_id] = claim
            pending = unprocessed
            if pending:
                attempt += 1
                if attempt > _UNPROCESSED_ATTEMPTS:
                    raise UsageError(f"{self._table}: DynamoDB left keys unprocessed {attempt} times; try again later")
                self._sleep(min(5.0, 0.1 * 2 ** attempt))
        return claims

    def _scan_index(self) -> dict[tuple[str, str, str], list[Claim]]:
        if self._by_etag is not None:
            return self._by_etag
        index: dict[tuple[str, str, str], list[Claim]] = {}
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {"TableName": self._table, "ConsistentRead": False,
                                      "ReturnConsumedCapacity": "TOTAL"}
            if start:
                kwargs["ExclusiveStartKey"] = start
            page = self._call("Scan", self._client.scan, kwargs)
            items = page.get("Items", [])
            consumed = page.get("ConsumedCapacity")
            # A Scan is billed on the bytes it read, summed over the page, then rounded up.
            self._units.add(float(consumed.get("CapacityUnits", 0)) if consumed else None,
                            _units(sum(item_size(item) for item in items)))
            self._units.items += len(items)
            for item in items:
                claim = _claim(item)
                parsed = parse_unversioned_id(claim.object_id)
                if parsed is not None:
                    index.setdefault(parsed, []).append(claim)
            start = page.get("LastEvaluatedKey")
            if not start:
                break
        self._by_etag = index
        return index

    def _call(self, operation: str, send: Callable[..., Any], request: dict[str, Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        self._units.calls[operation] += 1
        try:
            return send(**request)
        except (ClientError, BotoCoreError) as e:
            raise UsageError(f"DynamoDB table {self._table}: {operation} failed: {error_code(e)}") from e


def parse_unversioned_id(oid: str) -> tuple[str, str, str] | None:
    """``(bucket, key, etag)`` of an unversioned claim id ``{4 hex}#{bucket}/{key}#e:{etag}@{sequencer}``."""
    _, sep, rest = oid.partition("#")
    name, sep2, identity = rest.rpartition("#e:")
    # Neither an eTag nor a sequencer holds '#': one after "#e:" means the key held "#e:"
    # and the id ends in another identity (a version id).
    if not sep or not sep2 or "#" in identity:
        return None
    bucket, slash, key = name.partition("/")
    etag = identity.rpartition("@")[0]
    if not slash or not etag:
        return None
    return bucket, key, etag


def _claim(item: dict[str, Any]) -> Claim:
    lease = item.get("LeaseUntil", {}).get("N")
    try:
        lease_until = float(lease) if lease is not None else None
    except ValueError:
        lease_until = None
    return Claim(object_id=str(item.get("ObjectID", {}).get("S", "")),
                 archive_key=item.get("ArchiveKey", {}).get("S") or None, lease_until=lease_until)


def _units(size: int) -> float:
    return _EVENTUAL_UNIT * max(1, math.ceil(size / _READ_UNIT_BYTES))


def item_size(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB bills it: attribute names plus values (documented rules)."""
    return sum(len(name.encode("utf-8")) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    (kind, data), = value.items()
    if kind == "S":
        return len(str(data).encode("utf-8"))
    if kind == "N":
        return _number_size(str(data))
    if kind == "B":
        return len(data)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(_value_size({kind[0]: element}) for element in data)
    if kind == "L":
        return 3 + sum(1 + _value_size(element) for element in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode("utf-8")) + _value_size(v) for k, v in data.items())
    return len(json.dumps(data))


def _number_size(text: str) -> int:
    # Up to 38 significant digits, two per byte, plus one byte.
    try:
        digits = Decimal(text).normalize().as_tuple().digits
    except InvalidOperation:
        return len(text)
    return (len(digits) + 1) // 2 + 1


# -- archives ------------------------------------------------------------------------------

Identity = tuple[str, str, str]  # (bucket, key, "v:{version id}" or "e:{eTag}")


class ArchiveIndex:
    """Which object versions each archive holds, read once per archive key; and, for an
    object whose claim is gone, which published archive lists it (:meth:`find`)."""

    def __init__(self, env: Environment, *, now: datetime | None = None, window: timedelta | None = None) -> None:
        self._env = env
        self._now = now or datetime.now(UTC)
        self._window = window  # None: up to now
        self._cache: dict[str, frozenset[Identity] | None] = {}
        self._published: dict[str, bool] = {}
        self._taken: set[str] = set()  # published, then taken away by the consumer
        self._named: set[str] = set()
        self._hours_read: set[int] = set()
        self._listed: dict[Identity, list[str]] = {}
        self.sidecars = 0
        self.streamed = 0
        self.absent = 0
        self.swept_sidecars = 0
        self.listings = 0
        self.problems: list[str] = []

    def holds(self, archive_key: str, version: Version) -> bool:
        self._named.add(archive_key)
        held = self._load(archive_key)
        return held is not None and any(identity in held for identity in _identities_of(version))

    def find(self, version: Version) -> str | None:
        """A published archive whose manifest lists ``version``, found without a claim."""
        self._sweep(version.last_modified)
        for identity in _identities_of(version):
            for archive_key in self._listed.get(identity, ()):
                if self._exists(archive_key):
                    return archive_key
        return None

    def describe(self) -> str:
        return (f"{len(self._named)} archive keys named by claims: {self.sidecars} manifests read from sidecars, "
                f"{self.streamed} archives streamed, {self.absent} absent; for objects without a claim: "
                f"{self.swept_sidecars} sidecars read over {len(self._hours_read)} hours of archives "
                f"({self.listings} listings)")

    # -- archives named by claims

    def _load(self, archive_key: str) -> frozenset[Identity] | None:
        if archive_key not in self._cache:
            self._cache[archive_key] = self._read(archive_key)
        return self._cache[archive_key]

    def _read(self, archive_key: str) -> frozenset[Identity] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self._exists(archive_key):
            return None
        client, bucket = self._env.minio(), self._env.minio_secret().bucket
        label = f"s3://{bucket}/{archive_key}"
        try:
            document = self._sidecar(client, bucket, archive_key)
            if document is None and archive_key in self._taken:
                self.problems.append(f"{label}: taken away after its publish, and its manifest sidecar is gone: "
                                     "the objects it held cannot be known")
                return None
            if document is None:
                self.streamed += 1
                body = client.get_object(Bucket=bucket, Key=archive_key)["Body"]
                try:
                    document = read_manifest(body, codec=codec_of(archive_key))  # type: ignore[arg-type]
                finally:
                    body.close()
            else:
                self.sidecars += 1
        except (ArchiveReadError, UsageError) as e:
            self.problems.append(f"{label}: its manifest cannot be read: {e}")
            return None
        except (ClientError, BotoCoreError) as e:
            raise UsageError(f"{label}: cannot read: {error_code(e)}") from e
        return _identities(document, label, self.problems)

    def _exists(self, archive_key: str) -> bool:
        """Whether the archive was published: it is in MinIO, or its published marker is
        (the consumer took the archive away; its sidecar still lists what it held). HEADs,
        once per key."""
        if archive_key not in self._published:
            if self._head(archive_key):
                self._published[archive_key] = True
            elif self._head(published_key(archive_key)):
                self._published[archive_key] = True
                self._taken.add(archive_key)
            else:
                self.absent += 1
                self._published[archive_key] = False
        return self._published[archive_key]

    def _head(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        client, bucket = self._env.minio(), self._env.minio_secret().bucket
        try:
            client.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if error_code(e) not in ("404", "NoSuchKey", "NotFound"):
                raise UsageError(f"s3://{bucket}/{key}: cannot read: {error_code(e)}") from e
            return False
        except BotoCoreError as e:
            raise UsageError(f"s3://{bucket}/{key}: cannot read: {error_code(e)}") from e
        return True

    @staticmethod
    def _sidecar(client: Any, bucket: str, archive_key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            body = client.get_object(Bucket=bucket, Key=sidecar_key(archive_key))["Body"]
        except ClientError as e:
            if error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        try:
            document = json.loads(body.read())
        except ValueError:
            return None  # a broken sidecar is only a missed shortcut: read the archive itself
        return document if isinstance(document, dict) else None

    # -- archives found by their hour, for objects without a claim

    def _sweep(self, last_modified: datetime) -> None:
        """Index the sidecars of every hour whose archives can hold an object uploaded at
        ``last_modified``, unless already read in this run."""
        first = _hour(last_modified)
        until = self._now if self._window is None else min(self._now, last_modified + self._window)
        last = max(first, _hour(until))
        missing = [hour for hour in range(first, last + 1) if hour not in self._hours_read]
        for start, end in _runs(missing):
            self._read_hours(start, end)
            self._hours_read.update(range(start, end + 1))

    def _read_hours(self, start: int, end: int) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client, bucket = self._env.minio(), self._env.minio_secret().bucket
        prefix = self._env.settings.archive_prefix
        base = SIDECAR_PREFIX + (f"{prefix}/" if prefix else "")
        wanted = {_hour_path(hour) for hour in range(start, end + 1)}
        # One listing per day, by Prefix alone: file-system-backed stores (SeaweedFS, MinIO)
        # give StartAfter a folder's meaning, so it cannot cut a listing at an hour.
        days = sorted({path[:10] for path in wanted})
        try:
            with ThreadPoolExecutor(_SIDECAR_READERS) as pool:
                for day in days:
                    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                                  Prefix=f"{base}{day}/"):
                        self.listings += 1
                        keys = []
                        for item in page.get("Contents", []):
                            relative = item["Key"][len(base):]
                            archive_key = item["Key"][len(SIDECAR_PREFIX):-len(".json")]
                            if (_HOUR_PATH.match(relative) and relative[:13] in wanted
                                    and sidecar_key(archive_key) == item["Key"]):
                                keys.append(archive_key)
                        # At most one page of GETs in flight, a few at a time.
                        for archive_key, document in zip(keys, pool.map(self._swept_sidecar, keys), strict=True):
                            self._index(archive_key, document)
        except (ClientError, BotoCoreError) as e:
            raise UsageError(f"s3://{bucket}/{base}: cannot list or read sidecars: {error_code(e)}") from e

    def _swept_sidecar(self, archive_key: str) -> dict[str, Any] | None:
        return self._sidecar(self._env.minio(), self._env.minio_secret().bucket, archive_key)

    def _index(self, archive_key: str, document: dict[str, Any] | None) -> None:
        held = None
        if document is not None:
            self.swept_sidecars += 1
            held = _identities(document, archive_key, [])
        if held is None:
            # A sidecar gone or unreadable since the listing: the archive's own manifest, if published.
            held = self._load(archive_key)
        for identity in held or ():
            self._listed.setdefault(identity, []).append(archive_key)


_HOUR_PATH = re.compile(r"\d{4}/\d{2}/\d{2}/\d{2}/")


def _hour(moment: datetime) -> int:
    return int(moment.timestamp() // 3600)


def _hour_path(hour: int) -> str:
    return f"{datetime.fromtimestamp(hour * 3600, UTC):%Y/%m/%d/%H}"


def _runs(hours: list[int]) -> Iterator[tuple[int, int]]:
    """Sorted hours as (first, last) runs of consecutive ones."""
    run_start: int | None = None
    previous = 0
    for hour in hours:
        if run_start is None:
            run_start = hour
        elif hour != previous + 1:
            yield run_start, previous
            run_start = hour
        previous = hour
    if run_start is not None:
        yield run_start, previous


def _identities_of(version: Version) -> list[Identity]:
    """How a manifest entry names this version: by version id, else (an event without one) by eTag."""
    by_etag = (version.bucket, version.key, f"e:{version.etag}")
    return [(version.bucket, version.key, f"v:{version.version_id}"), by_etag] if version.version_id else [by_etag]


def _identities(document: dict[str, Any], label: str, problems: list[str]) -> frozenset[Identity] | None:
    objects = document.get("objects")
    if not isinstance(objects, list):
        problems.append(f"{label}: its manifest has no 'objects' list")
        return None
    held: set[Identity] = set()
    for entry in objects:
        if not isinstance(entry, dict):
            continue
        bucket, key = entry.get("bucket"), entry.get("key")
        if not isinstance(bucket, str) or not isinstance(key, str):
            continue
        if entry.get("version_id"):
            held.add((bucket, key, f"v:{entry['version_id']}"))
        elif entry.get("etag"):
            held.add((bucket, key, f"e:{str(entry['etag']).strip(chr(34))}"))
    return frozenset(held)


def classify(version: Version, claims: list[Claim], index: ArchiveIndex, *, now: float) -> dict[str, Any]:
    line: dict[str, Any] = {"bucket": version.bucket, "key": version.key, "version_id": version.version_id,
                            "etag": version.etag, "state": "never_claimed", "archive": None,
                            "size": version.size, "last_modified": _rfc3339(version.last_modified)}
    if not claims:
        # The claim may have expired long after the object was archived: ask the archives.
        archive = index.find(version)
        if archive is not None:
            line.update(state="archived", archive=archive)
        return line
    for claim in claims:
        if claim.archive_key and index.holds(claim.archive_key, version):
            line.update(state="archived", archive=claim.archive_key)
            return line
    leases = [c.lease_until for c in claims if c.lease_until is not None]
    line.update(state="in_progress", lease_expired=bool(leases) and max(leases) < now)
    return line


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")

