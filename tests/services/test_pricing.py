"""The model price table: shipped prices, a data-dir override model by model, loud failures that
name the file, and dated ids that never price an unknown newer model."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from server.errors import InvalidInput
from server.services.pricing import OVERRIDE_NAME, SHIPPED, PriceTable


def override(data_dir: Path, body: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / OVERRIDE_NAME
    path.write_text(body, encoding="utf-8")
    return path


def test_shipped_prices_without_an_override(tmp_path):
    table = PriceTable.load(tmp_path)  # no pricing.yaml in the data dir: the shipped table alone
    # claude-sonnet-4-5: $3/M input, $0.30/M cached input, $15/M output
    assert table.cost("claude-sonnet-4-5", 1_000_000, 0, 0) == Decimal(3)
    assert table.cost("claude-sonnet-4-5", 0, 0, 1_000_000) == Decimal("0.3")
    assert table.cost("claude-sonnet-4-5", 0, 1_000_000, 0) == Decimal(15)
    assert table.cost("claude-sonnet-4-5", 1000, 500, 2000) == Decimal("0.0111")
    assert table.cost("claude-haiku-4-5", 0, 0, 1) == Decimal("0.0000001")  # exact: rounding is the caller's


def test_an_override_replaces_one_model_and_adds_another(tmp_path):
    override(
        tmp_path,
        "models:\n"
        "  claude-sonnet-4-5: {input: 1, output: 2}\n"  # no cached_input: cached tokens cost the input price
        "  in-house-7b: {input: '0.5', cached_input: 0.05, output: 1.5}\n",
    )
    table = PriceTable.load(tmp_path)
    assert table.cost("claude-sonnet-4-5", 1_000_000, 1_000_000, 1_000_000) == Decimal(1 + 2 + 1)
    assert table.cost("claude-sonnet-4-5-20250929", 1_000_000, 0, 0) == Decimal(1)  # dated id: the override too
    assert table.cost("in-house-7b", 2_000_000, 1_000_000, 1_000_000) == Decimal("2.55")
    # Everything the override does not name keeps its shipped price.
    assert table.cost("claude-sonnet-4", 1_000_000, 0, 0) == Decimal(3)
    assert table.cost("gpt-5", 0, 1_000_000, 0) == Decimal(10)
    assert PriceTable.load(tmp_path / "elsewhere").cost("claude-sonnet-4-5", 1_000_000, 0, 0) == Decimal(3)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("models: [not, a, mapping]\n", id="models-not-a-mapping"),
        pytest.param("prices:\n  gpt-5: {input: 1, output: 2}\n", id="no-models-key"),
        pytest.param("", id="empty"),
        pytest.param("models:\n  gpt-5: {input: 1}\n", id="no-output"),
        pytest.param("models:\n  gpt-5: {input: 1, output: 2, batch: 0.5}\n", id="unknown-key"),
        pytest.param("models:\n  gpt-5: 3\n", id="price-not-a-mapping"),
        pytest.param("models:\n  gpt-5: {input: -1, output: 2}\n", id="negative"),
        pytest.param("models:\n  gpt-5: {input: lots, output: 2}\n", id="not-a-number"),
        pytest.param("models:\n  gpt-5: {input: 1, output: 2\n", id="not-yaml"),
        pytest.param("models:\n  gpt-5: {input: .inf, output: 2}\n", id="infinite"),
        pytest.param("models:\n  gpt-5: {input: .nan, output: 2}\n", id="nan"),
    ],
)
def test_a_malformed_override_is_refused_naming_the_file(tmp_path, body):
    path = override(tmp_path, body)
    with pytest.raises(InvalidInput) as err:
        PriceTable.load(tmp_path)
    assert str(path) in str(err.value)


def test_the_shipped_file_is_the_one_loaded(tmp_path):
    assert SHIPPED.is_file()
    table = PriceTable.load(tmp_path)
    for line in SHIPPED.read_text(encoding="utf-8").splitlines():
        if line.startswith("  ") and not line.strip().startswith("#"):
            assert table.lookup(line.split(":")[0].strip()) is not None, line


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-latest", "claude-sonnet-4-5"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),  # the nearest base, not gpt-5
        ("o3-2025-04-16", "o3"),
    ],
)
def test_a_dated_id_is_priced_as_its_base_model(tmp_path, model, priced_as):
    table = PriceTable.load(tmp_path)
    assert table.lookup(model) == table.lookup(priced_as) is not None
    assert table.cost(model, 1000, 1000, 1000) == table.cost(priced_as, 1000, 1000, 1000)


@pytest.mark.parametrize(
    "model",
    [
        "claude-opus-4-7",  # a newer model whose family (claude-opus-4) is known
        "claude-sonnet-4-6",
        "claude-opus-4-7-20260101",
        "gpt-5.1",
        "gpt-5-mini-high",
        "claude-sonnet-4-5-2025",  # not a date
        "claude-sonnet-4-5-20250929-extended",
        "CLAUDE-SONNET-4-5",
        "mystery-model",
    ],
)
def test_an_unknown_model_is_never_priced_as_a_known_one(tmp_path, model):
    table = PriceTable.load(tmp_path)
    assert table.lookup(model) is None
    with pytest.raises(InvalidInput) as err:
        table.cost(model, 1, 1, 1)
    assert model in str(err.value) and "cost_usd" in str(err.value) and OVERRIDE_NAME in str(err.value)
