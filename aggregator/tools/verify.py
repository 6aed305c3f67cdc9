"""``verify ARCHIVE...``: each archive read once and checked whole (see :mod:`.archives`).

One line per good archive on stdout; one line per problem on stderr, naming the archive
and the member. Exit 1 when any archive has a problem, 2 when one cannot be read at all.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from aggregator.archive.manifest import MANIFEST_NAME
from aggregator.tools import archives
from aggregator.tools.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, Environment, Problems, UsageError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("verify", help="check archives against their checksum and manifest",
                                   description=__doc__)
    parser.add_argument("archives", nargs="+", metavar="ARCHIVE", help="a local file or s3://BUCKET/KEY on MinIO")
    parser.add_argument("--codec", choices=("zstd", "gzip", "none"),
                        help="the codec, when the name does not end in .tar.zst, .tar.gz or .tar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, env: Environment, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    problems = Problems()
    status = EXIT_OK
    for spec in args.archives:
        try:
            result = archives.check(archives.resolve(spec, env), codec=args.codec)
        except UsageError as e:
            print(e, file=sys.stderr, flush=True)
            status = EXIT_USAGE
            continue
        for line in result.problems:
            problems.add(line)
        if result.ok:
            print(f"OK {spec}: {len(result.members)} members and {MANIFEST_NAME} match, "
                  f"{result.stored_size} bytes, sha256 {result.stored_sha256}", file=out, flush=True)
        else:
            status = max(status, EXIT_PROBLEM)
    return status
