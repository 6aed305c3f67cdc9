"""Aggregates small S3 objects into checksummed tar archives on MinIO, exactly once.

Layers (each imports only from the ones above it):

    base/       leaves: errors, settings, event parsing, names      (no package imports)
    archive/    codecs, hashing writer, PAX tar stream, manifest     (imports base)
    fetch/      version-pinned S3 GETs over threads and processes    (imports base)
    claims.py, delivery.py, credentials.py                            (imports base)
    clients.py  the only place that builds boto3 clients
    pipeline.py wires claim -> fetch -> archive -> upload -> commit
    lambda_app.py  Powertools batch handling around the pipeline
"""
