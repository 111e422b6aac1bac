"""The model price table: shipped YAML, overridden model by model by DATA_DIR/pricing.yaml."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from server.errors import InvalidInput

SHIPPED = Path(__file__).resolve().parents[1] / "pricing.yaml"
OVERRIDE_NAME = "pricing.yaml"
_PER_TOKEN = Decimal(1_000_000)
MAX_PRICE = Decimal(100_000)  # USD per million tokens: far above any model, far below overflowing a cost
# A provider's dated or pinned id is priced as its base name; nothing looser, so an unknown
# newer model is refused rather than silently priced as an older one.
_VERSION_SUFFIX = re.compile(r"^(?P<base>.+?)(?:-\d{8}|-\d{4}-\d{2}-\d{2}|@\d{8}|-latest)$")


@dataclass(frozen=True)
class Price:
    input: Decimal
    cached_input: Decimal
    output: Decimal

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int) -> Decimal:
        return (
            input_tokens * self.input + cached_input_tokens * self.cached_input + output_tokens * self.output
        ) / _PER_TOKEN


def _price(source: Path, model: str, raw: Any) -> Price:
    if not isinstance(raw, dict) or not {"input", "output"} <= set(raw) <= {"input", "cached_input", "output"}:
        raise InvalidInput(f"{source}: model {model!r} needs input and output (and optionally cached_input) prices")
    try:
        values = {k: Decimal(str(v)) for k, v in raw.items()}
    except InvalidOperation:
        raise InvalidInput(f"{source}: model {model!r} has a price that is not a number") from None
    if not all(v.is_finite() and 0 <= v <= MAX_PRICE for v in values.values()):
        raise InvalidInput(f"{source}: model {model!r} needs prices between 0 and {MAX_PRICE} USD per million tokens")
    return Price(values["input"], values.get("cached_input", values["input"]), values["output"])


def _read(source: Path) -> dict[str, Price]:
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise InvalidInput(f"{source}: expected a mapping with a `models:` mapping of model -> prices")
    return {str(model): _price(source, str(model), prices) for model, prices in raw["models"].items()}


class PriceTable:
    def __init__(self, prices: dict[str, Price]) -> None:
        self._prices = prices

    @classmethod
    def load(cls, data_dir: Path) -> PriceTable:
        prices = _read(SHIPPED)
        override = data_dir / OVERRIDE_NAME
        if override.is_file():
            prices.update(_read(override))
        return cls(prices)

    def lookup(self, model: str) -> Price | None:
        price = self._prices.get(model)
        if price is None and (match := _VERSION_SUFFIX.match(model)):
            price = self._prices.get(match["base"])
        return price

    def cost(self, model: str, input_tokens: int, output_tokens: int, cached_input_tokens: int) -> Decimal:
        price = self.lookup(model)
        if price is None:
            raise InvalidInput(
                f"no price for model {model!r}: pass cost_usd, or add it to {OVERRIDE_NAME} in the data dir "
                f"(known: {', '.join(sorted(self._prices))})"
            )
        return price.cost(input_tokens, output_tokens, cached_input_tokens)
