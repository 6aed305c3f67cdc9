"""The seed's design, implemented honestly as the yardstick for every headline ratio.

What the system this one descends from did, step by step:

1. a ``ThreadPoolExecutor`` submits one boto3 ``get_object`` per object (the body read
   whole in the worker thread);
2. one writer takes the results as they complete and adds each as a ``tarfile`` member of
   a ``w:gz`` stream (``tarfile`` + ``gzip``, level 6 unless told otherwise) written into a
   ``SpooledTemporaryFile``;
3. the archive is read back to compute its SHA-256;
4. ``put_object`` uploads it, then ``copy_object`` onto itself with
   ``MetadataDirective=REPLACE`` adds the ``sha256_checksum`` metadata (a second request
   that makes the server copy the whole archive: the key exists for a while without it).

It is a fair version of that design, not a straw man: the client's pool is as large as
the thread pool (no "pool is full" reconnects), the GETs stream into memory once, and the
codec can be switched to zstd (``codec="zstd"``) to separate the design's cost from
gzip's. It keeps the seed's flaws that do not cost time (no version pin, no claims).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from aggregator.base.events import ObjectRef

SPOOL_BYTES = 64 * 1024 * 1024
HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class SeedResult:
    key: str
    archived: int
    input_bytes: int
    stored_bytes: int
    sha256_hex: str


def _get(client: Any, ref: ObjectRef) -> tuple[ObjectRef, bytes, float]:
    answer = client.get_object(Bucket=ref.bucket, Key=ref.key)
    return ref, answer["Body"].read(), answer["LastModified"].timestamp()


def _open_tar(spool: Any, codec: str, level: int) -> tuple[tarfile.TarFile, Any]:
    """The tar stream and, for zstd, the compressor stream to close after it."""
    if codec == "gzip":
        return tarfile.open(fileobj=spool, mode="w:gz", compresslevel=level, format=tarfile.PAX_FORMAT), None
    if codec == "zstd":
        import zstandard

        stream = zstandard.ZstdCompressor(level=level).stream_writer(spool, closefd=False)
        return tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT), stream
    raise ValueError(f"unknown codec {codec!r}")


def archive_like_the_seed(client: Any, refs: Sequence[ObjectRef], *, bucket: str, key: str, workers: int = 16,
                          codec: str = "gzip", level: int = 6) -> SeedResult:
    """Fetch ``refs`` with ``client`` and store one archive under ``bucket``/``key``."""
    input_bytes = 0
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        tar, compressor = _open_tar(spool, codec, level)
        with tar, ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_get, client, ref) for ref in refs]
            for future in as_completed(futures):
                ref, body, mtime = future.result()
                info = tarfile.TarInfo(name=f"{ref.bucket}/{ref.key}")
                info.size = len(body)
                info.mtime = int(mtime)
                tar.addfile(info, io.BytesIO(body))
                input_bytes += len(body)
        if compressor is not None:
            compressor.close()
        size = spool.tell()
        spool.seek(0)
        digest = hashlib.sha256()
        while chunk := spool.read(HASH_CHUNK):
            digest.update(chunk)
        spool.seek(0)
        client.put_object(Bucket=bucket, Key=key, Body=spool)
    sha256_hex = digest.hexdigest()
    client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                       Metadata={"sha256_checksum": sha256_hex}, MetadataDirective="REPLACE")
    return SeedResult(key=key, archived=len(refs), input_bytes=input_bytes, stored_bytes=size, sha256_hex=sha256_hex)
