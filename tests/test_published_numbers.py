"""Every published number is the report's: the documents quote ``summary.json`` files.

A passage that quotes a report sits between ``<!-- numbers: docs/results/<name>/summary.json -->``
and ``<!-- /numbers -->``; each decimal number in it must be one of that summary's numbers as
shown (rounded to the digits written, with the sign where one is written). README.md and
MODEL_CARD.md publish no measured figure outside such a passage, except the published
benchmarks of others listed here with their source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT
from helpers.metrics import numbers_in

BLOCK = re.compile(r"<!-- numbers: (?P<paths>[^>]*?) -->(?P<text>.*?)<!-- /numbers -->", re.S)
DECIMAL = re.compile(r"(?<![\w.])[+-]?\d+\.\d+(?!\w|\.\d)")
# what reads as a measured figure in README and the model card: 0.xyz and finer
MEASURED = re.compile(r"(?<![\w.])[+-]?0\.\d{3,}(?!\w|\.\d)")
# figures others published, quoted for comparison (not this project's measurements)
EXTERNAL = {
    "0.717": "MedMNIST v2, ResNet-18 (28) test AUROC",
    "0.524": "MedMNIST v2, ResNet-18 (28) test accuracy",
    "0.750": "MedMNIST v2, AutoML Vision test AUROC",
    "0.531": "MedMNIST v2, AutoML Vision test accuracy",
    "0.754": "MedMNIST+, VGG16 from ImageNet weights, 28x28 test AUROC",
}
PAGES = sorted((ROOT / "docs").rglob("*.md")) if (ROOT / "docs").is_dir() else []
# the report's own pages are what the summaries hold; the documents that quote them are checked
DOCUMENTS = [ROOT / "README.md", ROOT / "MODEL_CARD.md"] + [
    p for p in PAGES if "results" not in p.relative_to(ROOT / "docs").parts[:1]
]


def shown(number: str, values: list[float]) -> bool:
    """Whether ``number`` (as written) is one of ``values`` rounded to its digits."""
    digits = len(number.split(".")[1])
    form = f"{{:+.{digits}f}}" if number[0] in "+-" else f"{{:.{digits}f}}"
    return any(form.format(v) == number for v in values)


def disagreements(text: str, root: Path) -> list[str]:
    """What in ``text``'s quoting passages is not in the summary each cites."""
    found = []
    for block in BLOCK.finditer(text):
        values: list[float] = []
        for name in block["paths"].split():
            path = root / name
            if not path.is_file():
                found.append(f"cites {name}, which does not exist")
                continue
            values += numbers_in(json.loads(path.read_text()))
        found += [
            f"{n} (cites {block['paths']})"
            for n in DECIMAL.findall(block["text"])
            if not shown(n, values) and n.lstrip("+-") not in EXTERNAL  # others' benchmarks
        ]
    return found


def uncited(text: str) -> list[str]:
    """Measured-looking figures outside every quoting passage, others' benchmarks aside."""
    outside = BLOCK.sub("", text)
    return [n for n in MEASURED.findall(outside) if n.lstrip("+-") not in EXTERNAL]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_numbers_are_the_summaries(document: Path):
    assert not disagreements(document.read_text(), ROOT)


@pytest.mark.parametrize("name", ["README.md", "MODEL_CARD.md"])
def test_readme_and_model_card_publish_only_quoted_figures(name: str):
    text = (ROOT / name).read_text()
    assert BLOCK.search(text), f"{name} quotes no report summary"
    assert not uncited(text)


def test_the_check_catches_a_wrong_figure_and_a_missing_summary(tmp_path):
    summary = {
        "configurations": [{"test": {"auroc": {"mean": 0.74127, "std": 0.0093}}}],
        "mtcsnn_vs_ce": [{"auroc": {"difference": -0.00341}}],
    }
    (tmp_path / "s.json").write_text(json.dumps(summary))
    good = (
        "<!-- numbers: s.json -->\nAUROC 0.741 +/- 0.0093, MTCSNN - CE -0.0034\n<!-- /numbers -->"
    )
    assert disagreements(good, tmp_path) == []
    assert disagreements(good.replace("-0.0034", "-0.0034, MedMNIST's 0.717"), tmp_path) == []
    assert disagreements(good.replace("0.741 ", "0.742 "), tmp_path) == ["0.742 (cites s.json)"]
    assert disagreements(good.replace("-0.0034", "+0.0034"), tmp_path) == ["+0.0034 (cites s.json)"]
    assert disagreements(good.replace("s.json", "gone.json"), tmp_path)[0].startswith("cites")
    assert uncited(good + "\nelsewhere 0.7412 and MedMNIST's 0.717") == ["0.7412"]
