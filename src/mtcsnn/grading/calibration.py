"""How far a grader's probabilities can be taken as probabilities, and a fix fitted on val.

The expected calibration error (ECE) of the top grade's probability (15 equal-width bins,
torchmetrics), the multi-class Brier score and the negative log-likelihood; and temperature
scaling (Guo et al., 2017): the probabilities' logarithms divided by one number T, chosen on
val to minimise the NLL there, which changes no predicted grade and no AUROC.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15
# the temperatures searched: far enough either way for any grader seen here
TEMPERATURE_RANGE = (0.05, 20.0)


def _tensor(values, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def top_grade_ece(grades, probs) -> float:
    """Expected calibration error of the top grade's probability, 15 equal-width bins."""
    probs = _tensor(probs)
    return float(
        multiclass_calibration_error(
            probs, _tensor(grades, torch.long), probs.shape[1], n_bins=ECE_BINS, norm="l1"
        )
    )


def calibration(grades, probs) -> dict[str, float]:
    """ECE of the top-grade probability (15 bins), multi-class Brier score and NLL."""
    ece = top_grade_ece(grades, probs)
    probs = _tensor(probs)
    grades = _tensor(grades, torch.long)
    onehot = torch.nn.functional.one_hot(grades, probs.shape[1]).to(probs.dtype)
    brier = ((probs - onehot) ** 2).sum(1).mean()
    taken = probs.gather(1, grades[:, None]).squeeze(1)
    nll = -torch.log(taken.clamp_min(torch.finfo(probs.dtype).tiny)).mean()
    return {"ece": float(ece), "brier": float(brier), "nll": float(nll)}


def scaled(probs, temperature: float) -> torch.Tensor:
    """``softmax(log(probs) / temperature)``: the probabilities at another temperature."""
    logp = torch.log(_tensor(probs).clamp_min(torch.finfo(torch.float64).tiny))
    return torch.softmax(logp / temperature, dim=1)


def fit_temperature(grades, probs) -> float:
    """The temperature that minimises the NLL of ``probs`` on these (val) images."""
    grades = _tensor(grades, torch.long)
    logp = torch.log(_tensor(probs).clamp_min(torch.finfo(torch.float64).tiny))

    def nll(log_t: float) -> float:
        scaled_logp = torch.log_softmax(logp / math.exp(log_t), dim=1)
        return float(-scaled_logp.gather(1, grades[:, None]).mean())

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(found.x))


def check_temperature(value: object) -> float:
    """A temperature read back from a file: a finite number in the searched range."""
    if not (
        isinstance(value, float)
        and math.isfinite(value)
        and TEMPERATURE_RANGE[0] <= value <= TEMPERATURE_RANGE[1]
    ):
        raise ValueError(f"its temperature is not a number in {list(TEMPERATURE_RANGE)}")
    return value
