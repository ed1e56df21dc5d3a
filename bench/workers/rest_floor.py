"""The REST floor: fetch every page and parse it (orjson), 4 requests at a time, nothing else.

Usage: ``python rest_floor.py BASE_URL PAGE_SIZE``.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
from _report import Stopwatch, emit


def main() -> None:
    base, size = sys.argv[1], int(sys.argv[2])
    with Stopwatch() as sw, httpx.Client(base_url=base) as client:

        def fetch(page: int) -> dict:
            return orjson.loads(client.get("/items", params={"page": page, "size": size}).content)

        first = fetch(1)
        total = first["meta"]["total_pages"]
        count = len(first["data"])
        with ThreadPoolExecutor(4) as pool:
            for doc in pool.map(fetch, range(2, total + 1)):
                count += len(doc["data"])
    emit(sw.seconds, count)


if __name__ == "__main__":
    main()
