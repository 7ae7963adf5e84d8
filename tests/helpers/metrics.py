"""What several tests do with ``metrics.json`` and a run's other files."""

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


def write_robustness(folder, clean: float, lost: dict[str, float]) -> None:
    """A robustness.csv whose AUROC under each corruption is clean - lost * severity / 3."""
    lines = ["corruption,severity,auroc,acc,kappa,referable_auroc", f"none,0,{clean},0.5,0.4,0.8"]
    for name, per_step in lost.items():
        for s in range(1, 6):
            lines.append(f"{name},{s},{clean - per_step * s / 3},0.5,0.4,0.8")
    (folder / "robustness.csv").write_text("\n".join(lines) + "\n")
