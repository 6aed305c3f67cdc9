"""Operator commands (contract section 9): ``python -m aggregator.tools COMMAND``.

    verify ARCHIVE...            check archives against their checksum and manifest
    extract ARCHIVE DIR          unpack one archive safely, original keys restored
    reconcile --bucket B ...     every object version of a landing bucket: archived or not
    backfill --report FILE ...   synthetic ObjectCreated events for what was never claimed

The top floor of the package: it may import anything in :mod:`aggregator`, nothing
imports it. Exit status: 0 all good, 1 a problem found (one line per problem on stderr),
2 wrong usage or unreadable input. Bad data never gives a traceback.
"""
