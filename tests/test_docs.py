"""The docs: the site builds with MkDocs in strict mode, and README's relative links resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT


def nav_files() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return [
        next(iter(entry.values())) if isinstance(entry, dict) else entry for entry in config["nav"]
    ]


def relative_links(markdown: str) -> list[str]:
    """The targets of ``[text](target)`` links that are not web addresses or page anchors."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown)
    return [t for t in targets if not re.match(r"[a-z]+:|#", t)]


def test_readme_links_resolve():
    links = relative_links((ROOT / "README.md").read_text())
    assert "docs/getting-started.md" in links  # the map of the docs is there
    missing = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_relative_links_finds_a_missing_target():
    links = relative_links("[a](docs/nope.md) [b](https://example.org) [c](#top) [d](x.md#y)")
    assert links == ["docs/nope.md", "x.md#y"]
    assert not (ROOT / links[0]).exists()


def test_every_page_is_in_the_navigation():
    """A page outside ``nav`` would be neither in the site's menu nor run by the command harness."""
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages == set(nav_files())


def test_the_numbers_paragraph_is_marked_once():
    """The README's answer to 'does MTCSNN help?' is its one block of measured figures, quoting
    the default recipe's study and the val-chosen one."""
    readme = (ROOT / "README.md").read_text()
    opening = (
        "<!-- numbers: docs/results/default_recipe/summary.json "
        "docs/results/screening/summary.json -->\n"
    )
    assert readme.count("<!-- numbers: ") == 1 and readme.count("<!-- /numbers -->\n") == 1
    assert readme.index("## Does MTCSNN help?") < readme.index(opening)
    assert readme.index(opening) < readme.index("<!-- /numbers -->")


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path):
    """Broken links, missing anchors and API pages that do not render fail the build."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "PairLoss" in api and "SiameseResNet" in api
    assert "Research use only" in (tmp_path / "site" / "model-card" / "index.html").read_text()
