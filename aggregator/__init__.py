"""Aggregates small S3 objects into checksummed tar archives on MinIO, exactly once.

Layers (each imports only from the ones above it):

    base/       leaves: errors, settings, event parsing, names      (no package imports)
    archive/    codecs, hashing writer, PAX tar stream, manifest, spool (imports base)
    fetch/      version-pinned S3 GETs over threads and processes    (imports base)
    claims/     per-object claims: protocol and DynamoDB JSON client (imports base)
    delivery/   publish to MinIO and its outcome, the MinIO secret    (imports base)
    clients.py  the only place that builds boto3 clients
    pipeline.py wires claim -> fetch -> archive -> upload -> commit
    lambda_app.py  Powertools batch handling around the pipeline
"""
