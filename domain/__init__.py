"""runledger's domain: aggregates (one stream each), their events, value types, errors, the Ledger.

Pure: imports nothing of the project's other packages, nor fastapi, psycopg or boto3.
"""
