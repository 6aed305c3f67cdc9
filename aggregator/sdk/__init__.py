"""What the lean clients (the S3 fetch over the CRT, the DynamoDB JSON client) need from
the AWS SDK so that they behave like boto3: endpoints from botocore's own ruleset,
credentials that stay fresh, proxies and trust stores as boto3 reads them.

A floor between ``base`` and the blocks: it imports only ``base`` (and botocore/awscrt);
``fetch``, ``claims`` and ``delivery`` may import it. Every private botocore attribute
still used lives in :mod:`aggregator.sdk.botocore_private`, nowhere else.
"""
