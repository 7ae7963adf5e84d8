"""Everything one report finds in its grouped runs, computed once: the page
(:mod:`mtcsnn.reporting.page`) and the summary (:mod:`mtcsnn.reporting.summary`) both show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtcsnn.reporting.comparing import (
    chosen_against_the_rest,
    chosen_on_val,
    comparisons,
    ensemble_rows,
    pooled_comparison,
    val_choices_compared,
)
from mtcsnn.reporting.cross_validation import add_oof_differences, cv_rows, oof_comparisons
from mtcsnn.reporting.referring import referral_rows
from mtcsnn.reporting.robustness import add_corruption_errors, robustness_rows
from mtcsnn.reporting.runs import Run


@dataclass(frozen=True)
class Findings:
    groups: dict[tuple, list[Run]]  # configuration -> its runs (a CV seed's folds as one)
    skipped: list[tuple[Path, str]]  # runs left out, with why
    compared: list[dict]  # MTCSNN vs CE, same settings and seed
    pooled: dict | None  # those pairs pooled over configurations
    ensembles: list[dict]  # each configuration's seeds averaged
    referrals: list[dict]  # referring the uncertain
    robustness: list[dict]  # under corruptions
    rankings: list[dict]  # per loss, the configurations ranked on val (chosen_on_val)
    margins: list[dict]  # each loss's chosen one against those it was ranked above
    choices: list[dict]  # each multi-task loss's chosen one against CE's
    folds: list[dict]  # cross-validated configurations
    folds_compared: list[dict]  # their out-of-fold differences to CE


def find(
    groups: dict[tuple, list[Run]], skipped: list[tuple[Path, str]], num_resamples: int
) -> Findings:
    """What the report shows of ``groups``; ``num_resamples`` for every bootstrap CI."""
    compared = comparisons(groups, num_resamples)
    rankings = chosen_on_val(groups)
    margins = chosen_against_the_rest(groups, rankings, num_resamples)
    add_oof_differences(margins, groups, num_resamples)
    choices = val_choices_compared(groups, rankings, num_resamples)
    add_corruption_errors(choices, groups)
    return Findings(
        groups=groups,
        skipped=skipped,
        compared=compared,
        pooled=pooled_comparison(compared, num_resamples),
        ensembles=ensemble_rows(groups, num_resamples),
        referrals=referral_rows(groups),
        robustness=robustness_rows(groups),
        rankings=rankings,
        margins=margins,
        choices=choices,
        folds=cv_rows(groups),
        folds_compared=oof_comparisons(groups, num_resamples),
    )
