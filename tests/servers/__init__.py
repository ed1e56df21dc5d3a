"""Local servers the tests talk to: PostgreSQL, OpenBao, Prefect, a REST API, BI tools,
an Airbyte API, SMTP, webhooks and S3 (moto), each started on a free loopback port.

Never imported by product code.
"""
