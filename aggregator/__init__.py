"""Aggregates small S3 objects into checksummed tar archives on MinIO, exactly once.

Floors (each imports only from the floors below it; import-linter checks it, see
pyproject.toml and tests/unit/test_layers.py):

    tools/        operators' and consumers' commands: verify, extract, reconcile, backfill
    lambda_app.py Powertools batch handling around the pipeline; builds the dependencies
    pipeline/     one batch: claim -> recover -> fetch into one archive -> publish   | clients.py
    archive/  claims/  delivery/  fetch/      the blocks, independent of each other
    sdk/          botocore's endpoint rules, CRT HTTP (proxies, trust stores), credentials
    base/         leaves: errors, settings, deadline, codecs, events, names, fetch results

clients.py is the only module that builds boto3 clients. The contract operators and
consumers rely on is docs/contract.md.
"""
