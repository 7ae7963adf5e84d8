"""``python -m mtcsnn.report <folder> [<folder> ...]``: one table and a few figures from the runs
under one folder, or several compared together (``--out`` names where).

Each configuration gets the mean and standard deviation over its seeds, MTCSNN is compared with
CE seed by seed and as seed ensembles, and val chooses among configurations: see
:mod:`mtcsnn.reporting` (the numbers), :mod:`mtcsnn.reporting.page` (``results.md``),
:mod:`mtcsnn.reporting.summary` (``summary.json``: the same numbers, for programs and for the
checks of the documents that quote them) and :mod:`mtcsnn.reporting.figures` (the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mtcsnn.reporting.cross_validation import FoldSet, combine_folds
from mtcsnn.reporting.figures import write_figures
from mtcsnn.reporting.findings import find
from mtcsnn.reporting.grouping import group_runs
from mtcsnn.reporting.page import results_markdown
from mtcsnn.reporting.runs import collect_runs
from mtcsnn.reporting.summary import report_summary
from mtcsnn.run.files import write_text_atomic
from mtcsnn.run.stdout import quiet_on_closed_pipe


def main(argv: list[str] | None = None) -> int:
    return quiet_on_closed_pipe(lambda: report(argv))


def report(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="mtcsnn-report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "folders",
        type=Path,
        nargs="+",
        metavar="folder",
        help="run folders or multirun folders (several: their runs compared together)",
    )
    parser.add_argument("--out", type=Path, help="where to write (default: the one folder)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(argv)

    for folder in args.folders:
        if not folder.is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 2
    if len(args.folders) > 1 and args.out is None:
        print("error: several folders need --out (where to write the report)", file=sys.stderr)
        return 2
    runs, skipped = collect_all(args.folders)
    found = len(runs)
    runs, incomplete = combine_folds(runs)  # the fold runs of each seed of a CV sweep as one
    skipped = sorted(skipped + incomplete)
    sets = sum(isinstance(r, FoldSet) for r in runs)
    if sets:
        print(f"{found - len(runs) + sets} fold runs put together as {sets} cross-validation sets")
    try:  # the runs are named from the folders' common part
        root = Path(os.path.commonpath(args.folders))
    except ValueError:  # some relative, some absolute
        root = Path(os.path.commonpath([f.absolute() for f in args.folders]))
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    for run in runs:
        if run.held_out_problem:
            print(f"note {run.path}: {run.held_out_problem}", file=sys.stderr)
    if not runs:
        names = ", ".join(str(f) for f in args.folders)
        print(f"error: no finished runs under {names}", file=sys.stderr)
        return 1
    out = args.out or root
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    findings = find(groups, skipped, args.bootstrap)
    title = ", ".join(map(str, args.folders))
    write_text_atomic(out / "results.md", results_markdown(findings, title))
    summary = report_summary(findings, root, args.bootstrap)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    figures = write_figures(groups, out)
    print(f"{len(runs)} run(s) in {len(groups)} configuration(s), {len(skipped)} skipped")
    print(f"wrote {out / 'results.md'}")
    print(f"wrote {out / 'summary.json'}")
    for figure in figures:
        print(f"wrote {figure}")
    return 0


def collect_all(folders: list[Path]) -> tuple[list, list]:
    """The runs under every folder (a run reached from two folders counts once) and the
    folders skipped, with why."""
    runs, skipped, seen = [], [], set()
    for folder in folders:
        found, passed_over = collect_runs(folder)
        runs += [r for r in found if os.path.realpath(r.path) not in seen]
        seen |= {os.path.realpath(r.path) for r in found}
        skipped += passed_over
    return runs, skipped


if __name__ == "__main__":
    sys.exit(main())
