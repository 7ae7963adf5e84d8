"""What several tests do with ``metrics.json``."""

from __future__ import annotations


def flat(values: dict, prefix: str = "") -> dict:
    """``{"referable": {"auroc": x}}`` -> ``{"referable.auroc": x}``: nested figures compared
    one by one (``pytest.approx`` takes no nested mappings)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers_in(value) -> list[float]:
    """Every number in a JSON document."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers_in(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers_in(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []
