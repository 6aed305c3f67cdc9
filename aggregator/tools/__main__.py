"""``python -m aggregator.tools verify|extract|reconcile|backfill`` (also ``aggregator-tools``).

Exit status: 0 all good; 1 a problem found (one line per problem on stderr); 2 wrong
usage or an input that cannot be read. Nothing here lets a traceback reach the operator
for bad data or a bad environment: those become one line and status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aggregator.base.errors import AggregatorError, ConfigError
from aggregator.tools import backfill, extract, reconcile, verify
from aggregator.tools.common import EXIT_USAGE, Environment, UsageError


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="aggregator-tools",
        description="Operator commands for the S3 -> MinIO aggregator. They read the function's own "
                    "environment (IDEMPOTENCY_TABLE_NAME, MINIO_SECRET_ID, AWS_REGION, AWS_ENDPOINT_URL...).",
        epilog="exit status: 0 all good, 1 a problem found, 2 wrong usage or unreadable input")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (verify, extract, reconcile, backfill):
        module.add_parser(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 on wrong usage, as argparse does
    try:
        env = Environment.from_env()
        status: int = args.run(args, env)
        return status
    except UsageError as e:
        _fail(str(e))
    except ConfigError as e:
        _fail(f"configuration: {e}")
    except AggregatorError as e:  # the MinIO secret unreadable, and the like
        _fail(f"{type(e).__name__}: {e}")
    except KeyboardInterrupt:
        _fail("interrupted")
    except BrokenPipeError:
        sys.stderr.close()  # `... | head`: the reader left; nothing more to say
    return EXIT_USAGE


def _fail(message: str) -> None:
    print(f"aggregator-tools: {' '.join(message.splitlines())}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
