"""Deciding for claims whose holders' leases are over: archived already, or ours to take.

A claim names the one archive its holder could publish the object in. Once the holder's
lease is over, that archive's existence is settled (no write that could create it is still
under way, see :mod:`aggregator.base.deadline`), so one look at it decides for good:

* the archive exists and its manifest lists the object: a duplicate, acknowledged;
* the archive was never published (neither it nor its published marker exists), or it
  exists without the object (the holder left it out): the claim may be taken over, pinned to
  the holder that was examined. An archive the consumer took away after its publish still
  answers from its sidecar (:meth:`aggregator.delivery.publish.MinioTarget.listing`);
* MinIO cannot tell us now (an error, an unreadable manifest): undecided, the message is
  retried later. Never guessed.

Each archive is looked at once per batch, in a bounded number of requests and bytes
(a HEAD and the manifest sidecar), whatever its size and however many objects name it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from aggregator.archive.manifest import read_manifest
from aggregator.base.codecs import codec_for_key
from aggregator.base.errors import AggregatorError
from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from aggregator.delivery.publish import NoSidecar

if TYPE_CHECKING:
    from logging import Logger

    from aggregator.claims.store import Holder


class ArchiveReader(Protocol):
    def listing(self, key: str) -> dict[str, Any] | None: ...

    def open_object(self, key: str) -> BinaryIO | None: ...


@dataclass
class Decision:
    duplicates: dict[str, str] = field(default_factory=dict)  # id -> the archive that holds it
    takeable: dict[str, Holder] = field(default_factory=dict)  # id -> the holder to take over from
    undecided: list[str] = field(default_factory=list)


def decide(expired: Mapping[str, Holder], *, reader: ArchiveReader, time_left: Callable[[], float],
           reserve: float, log: Logger, live: Mapping[str, Holder] | None = None) -> Decision:
    """Look at each holder's archive once; stop deciding when only ``reserve`` is left.

    ``live`` holders (leases not over) are looked at too: an archive they already published
    with the object makes it a duplicate now (S3 often notifies twice within seconds);
    otherwise they are undecided, since their archive may still appear.
    """
    decision = Decision()
    live = live or {}
    listings: dict[str, set[str] | None] = {}  # archive key -> ids it lists; None: no such archive
    unreadable: set[str] = set()
    for oid, holder in [*expired.items(), *live.items()]:
        key = holder.archive_key
        if key not in listings and key not in unreadable:
            if time_left() < reserve:
                decision.undecided.append(oid)
                continue
            try:
                listings[key] = _listed_ids(key, reader=reader)
            except (AggregatorError, ValueError, OSError) as e:
                log.error("cannot read a dead invocation's archive; its objects wait",
                          extra={"archive_key": key, "error": str(e)})
                unreadable.add(key)
        if key in unreadable:
            decision.undecided.append(oid)
            continue
        listed = listings[key]
        if listed is not None and oid in listed:
            decision.duplicates[oid] = key
        elif oid in live:
            decision.undecided.append(oid)
        else:
            decision.takeable[oid] = holder
    return decision


def _listed_ids(key: str, *, reader: ArchiveReader) -> set[str] | None:
    try:
        manifest = reader.listing(key)
    except NoSidecar:
        manifest = _manifest_inside(key, reader=reader)
    if manifest is None:
        return None
    return listed_ids(manifest)


def _manifest_inside(key: str, *, reader: ArchiveReader) -> dict[str, Any] | None:
    """An archive from before sidecars: read to its last member (unbounded, legacy only)."""
    codec = codec_for_key(key)
    body = reader.open_object(key)
    if body is None or codec is None:
        return None
    with contextlib.closing(body):
        return read_manifest(body, codec=codec.name)


def listed_ids(manifest: Mapping[str, Any]) -> set[str]:
    """The claim ids of the objects a manifest lists.

    The claim is keyed by the *event's* identity. An event without a versionId (moto's S3
    notifications, say) is keyed by eTag and sequencer, while the manifest records the
    version the GET answered with: both forms count, or such an object would be archived
    again.
    """
    ids = set()
    for entry in manifest.get("objects", []):
        for version_id in dict.fromkeys((entry.get("version_id"), None)):
            ref = ObjectRef(bucket=entry["bucket"], key=entry["key"], size=entry.get("size"), etag=entry.get("etag"),
                            version_id=version_id, sequencer=entry.get("sequencer"))
            ids.add(object_id(ref))
    return ids
