"""Kubernetes resource quantities (``500m``, ``1``, ``1Gi``...), for the tenant quota arithmetic.

The operator keeps the Kubernetes client library out of its process (memory), so its
``parse_quantity`` is not at hand; the quotas need only sums and multiples of CPU and memory.
"""

from __future__ import annotations

from decimal import Decimal

_SUFFIXES = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "m": Decimal("0.001"),
}


def parse(quantity: str) -> Decimal:
    """The quantity's value in base units (cores, bytes); ValueError when it is not one."""
    text = quantity.strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            number, factor = text[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, factor = text, Decimal(1)
    try:
        value = Decimal(number) * factor
    except ArithmeticError as exc:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}") from exc
    if value < 0:
        raise ValueError(f"negative quantity: {quantity!r}")
    return value


_BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
_DECIMAL = (("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3))


def canonical(value: Decimal, binary: bool) -> str:
    """How the API server writes a quantity back: the largest suffix (of the binary family when
    the quantity was written with one) that leaves a whole number; millis below one unit."""
    if value != value.to_integral_value():
        return f"{int((value * 1000).to_integral_value())}m"
    whole = int(value)
    for suffix, factor in _BINARY if binary else _DECIMAL:
        if whole and whole % factor == 0:
            return f"{whole // factor}{suffix}"
    return str(whole)


def times(quantity: str, count: int) -> str:
    """``count`` times ``quantity`` in the API server's own canonical form, so that the quota a
    server-side apply writes reads back unchanged (and a repeated apply changes nothing)."""
    binary = quantity.strip().endswith(tuple(suffix for suffix, _ in _BINARY))
    return canonical(parse(quantity) * count, binary)
