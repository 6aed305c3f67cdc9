"""Delivery to the on-premise MinIO bucket.

    publish.py  atomic publish of one archive with its checksum metadata, and its outcome
    secret.py   the MinIO credentials from Secrets Manager, cached and refreshed on rotation
"""
