"""Markdown cells of the report's tables: text from run folders shown as it is, numbers."""

from __future__ import annotations

import re

import numpy as np

from mtcsnn.reporting.runs import Run

# control characters and line breaks of every kind: a line break would end a table row or
# start a new block (a heading, a list) on the page
_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# Markdown's inline punctuation, a backslash before each shows it as itself
_INLINE = re.compile(r"([\\`*|\[\]{}~!#$^])")
# an underscore that opens or closes emphasis (not one inside a word, as in batch_size)
_EMPHASIS_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# what starts a block at the start of a line: a list item, a quote, a heading, a rule
_BLOCK_START = re.compile(r"^(\s*)([-+=])|^(\s*\d+)([.)])(?=\s|$)")
# what a renderer would turn into a link by itself: a URL's scheme, www., an e-mail's @
_AUTOLINK = re.compile(r"(?i)(?<=[a-z])(:)(?=//)|(?<=\bwww)(\.)|(@)")


def md(value: object) -> str:
    """Text from a run folder (a config value, a label, a folder name, a reason) as Markdown
    that shows it as it is: nothing in it makes a table column, HTML, a heading, emphasis, a
    link or a new line on the page."""
    text = _BREAKS.sub(" ", str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _INLINE.sub(r"\\\1", text)
    text = _EMPHASIS_UNDERSCORE.sub(r"\\_", text)
    text = _AUTOLINK.sub(lambda m: "\\" + m.group(0), text)
    return _BLOCK_START.sub(lambda m: "\\".join(g for g in m.groups() if g is not None), text)


def seeds_cell(runs: list[Run]) -> str:
    """The number of seeds; runs that repeat a seed are said to be repeats, not more seeds."""
    seeds = len({r.seed for r in runs})
    if seeds == len(runs):
        return str(seeds)
    return f"{seeds} ({len(runs)} runs: repeats of a seed)"


def difference_cells(row: dict, metrics: tuple[str, ...] = ("auroc", "acc")) -> list[str]:
    """Differences of a comparison row (AUROC and accuracy): ``+0.0034 [-0.0027, +0.0095]``."""
    return [f"{p:+.4f} [{lo:+.4f}, {hi:+.4f}]" for p, lo, hi in map(row.get, metrics)]


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f} +/- {std:.4f}"
