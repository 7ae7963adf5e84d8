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
