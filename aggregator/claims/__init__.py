"""Per-object claims in DynamoDB: who archives each object, and where.

    store.py     the claim protocol (conditional writes, leases, takeover)
    dynamodb.py  a lean DynamoDB JSON client that maps the service's errors for the store
"""
