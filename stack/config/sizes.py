"""Sizes as people write them in ``stack.yml``: ``1GB``, ``512MB``, ``64 MiB``, ``1048576``.

One parser for every place a config takes a size in bytes, and one way to show one.
Decimal units are powers of 1000 (``KB`` 10^3, ``MB`` 10^6, ``GB`` 10^9, ``TB`` 10^12
bytes), binary units powers of 1024 (``KiB`` 2^10, ``MiB`` 2^20, ``GiB`` 2^30, ``TiB``
2^40), as in IEC 80000-13. PostgreSQL's own settings differ: there ``1GB`` is 2^30 bytes,
so ``max_slot_wal_keep_size = 1GB`` is ``1 GiB`` here. Units are not case-sensitive
(``kB``, ``kb`` and ``KB`` are 1000 bytes: a size is never in bits); a plain number is bytes.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from connectors.config import ConfigProblem

_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_BY_NAME = {name.lower(): size for name, size in _UNITS.items()}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$", re.IGNORECASE)


def size_bytes(value: Any) -> Any:
    """``"1GB"``, ``"512MB"``, ``"64 MiB"``, ``"1048576"`` as bytes (whole, rounded down);
    other values (a plain integer) unchanged.

    Raises:
        ConfigProblem: a string that is not a size (pydantic reports it with the key).
    """
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value.strip())
    unit = _BY_NAME.get(match.group(2).lower() or "b") if match else None
    if match is None or unit is None:
        raise ConfigProblem(
            f"{value!r} is not a size",
            hint="write it as 1GB, 512MB, 64 MiB or a number of bytes: KB, MB, GB and TB "
            "are powers of 1000, KiB, MiB, GiB and TiB powers of 1024",
        )
    return int(Decimal(match.group(1)) * unit)


Size = Annotated[int, BeforeValidator(size_bytes), Field(ge=0)]
"""A size field, in bytes."""


def binary_units(size: int) -> bool:
    """Whether ``size`` reads best in binary units: a multiple of 1024 that is not one of
    1000 (``64 MiB``, ``1 GiB``), as a size written in them is."""
    return size % 1024 == 0 and size % 1000 != 0


def describe_size(size: int, binary: bool = False) -> str:
    """``size`` bytes in the largest unit it reaches, to two decimals: ``1.3 GB``,
    ``512 MB``, ``176 B``; with ``binary``, in KiB, MiB, GiB, TiB (``64 MiB``)."""
    family = [(name, n) for name, n in _UNITS.items() if n > 1 and name.endswith("iB") == binary]
    for name, n in reversed(family):
        if size >= n:
            return f"{size / n:.2f}".rstrip("0").rstrip(".") + f" {name}"
    return f"{size} B"
