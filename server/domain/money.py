"""Exact money: integer micro-dollars in the store, Decimal on the wire, never float."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

from server.errors import InvalidInput

MICROS_PER_USD = 1_000_000
_MICRO = Decimal("0.000001")
# Large enough for any budget, small enough that sums stay inside a 64-bit column.
MAX_USD = Decimal(1_000_000_000)


def to_micros(amount: Decimal, field: str) -> int:
    """An amount a caller typed: at most six decimal places, not negative, not absurd."""
    try:
        exact = Decimal(amount)
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidInput(f"{field}: {amount!r} is not an amount of money") from None
    if not exact.is_finite() or exact < 0 or exact > MAX_USD:
        raise InvalidInput(f"{field}: must be between 0 and {MAX_USD} USD, got {amount}")
    scaled = exact * MICROS_PER_USD
    if scaled != scaled.to_integral_value():
        raise InvalidInput(f"{field}: at most six decimal places (micro-dollars), got {amount}")
    return int(scaled)


def cost_to_micros(cost: Decimal) -> int:
    """A computed cost (tokens x price) rounded up to a whole micro-dollar, so spend is never
    under-counted."""
    return int((cost * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def usd(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS_PER_USD).quantize(_MICRO)
