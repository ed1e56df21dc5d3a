"""A local paginated JSON API for the REST scenario (not measured; run by the bench).

``GET /items?page=N&size=S`` returns ``{"data": [...], "meta": {"page": N, "total_pages":
P}}``, pages from 1, ``S`` records each (10 fields of mixed types, like the PostgreSQL
bench table). Pages are rendered once, at start, so the server costs the clients as
little as it can. HTTP/1.1 with keep-alive, one thread per connection, on 127.0.0.1.

Usage: ``python rest_server.py RECORDS PAGE_SIZE``; prints the port, then serves until
killed.
"""

from __future__ import annotations

import sys
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import orjson

STATUSES = ("new", "active", "paused", "closed")


def record(i: int) -> dict:
    return {
        "id": i,
        "account_id": (i * 7919) % 100000,
        "name": f"customer {i}",
        "email": f"user{i}@example.com",
        "status": STATUSES[i % 4],
        "amount": ((i * 37) % 1000000) / 100,
        "score": None if i % 50 == 0 else (i % 1000) / 7,
        "active": i % 3 == 0,
        "created_on": (date(2020, 1, 1) + timedelta(days=i % 2000)).isoformat(),
        "updated_at": (datetime(2024, 1, 1) + timedelta(seconds=i)).isoformat(),
    }


def pages(records: int, size: int) -> list[bytes]:
    total = -(-records // size)
    return [
        orjson.dumps(
            {
                "data": [record(i) for i in range(p * size + 1, min((p + 1) * size, records) + 1)],
                "meta": {"page": p + 1, "total_pages": total},
            }
        )
        for p in range(total)
    ]


def main() -> None:
    records, size = int(sys.argv[1]), int(sys.argv[2])
    rendered = pages(records, size)
    empty = orjson.dumps({"data": [], "meta": {"page": 0, "total_pages": len(rendered)}})

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            page = int(query.get("page", ["1"])[0])
            body = rendered[page - 1] if 1 <= page <= len(rendered) else empty
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
