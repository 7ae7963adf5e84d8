import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    mean_absolute_error,
    recall_score,
    roc_auc_score,
)

from mtcsnn.grading.metrics import grade_metrics, scalar_metrics


@pytest.fixture
def fixed_predictions():
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, size=300)
    logits = rng.normal(size=(300, 5)) + 1.5 * np.eye(5)[grades]  # better than chance
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.astype(np.float32), grades


def test_metrics_equal_scikit_learn_and_medmnist(fixed_predictions):
    probs, grades = fixed_predictions
    metrics = grade_metrics(5)
    # in two updates, as over two batches
    metrics.update(torch.from_numpy(probs[:170]), torch.from_numpy(grades[:170]))
    metrics.update(torch.from_numpy(probs[170:]), torch.from_numpy(grades[170:]))
    values = metrics.compute()
    pred = probs.argmax(1)
    assert values["acc"].item() == pytest.approx(accuracy_score(grades, pred), abs=1e-6)
    assert values["acc"].item() == pytest.approx(
        getACC(grades, probs, "ordinal-regression"), abs=1e-6
    )
    auroc = roc_auc_score(grades, probs, multi_class="ovr", average="macro")
    assert values["auroc"].item() == pytest.approx(auroc, abs=1e-5)
    assert values["auroc"].item() == pytest.approx(
        getAUC(grades, probs, "ordinal-regression"), abs=1e-5
    )
    kappa = cohen_kappa_score(grades, pred, weights="quadratic")
    assert values["kappa"].item() == pytest.approx(kappa, abs=1e-5)
    assert values["mae"].item() == pytest.approx(mean_absolute_error(grades, pred), abs=1e-6)
    recall = recall_score(grades, pred, average=None)
    assert values["recall"].numpy() == pytest.approx(recall, abs=1e-6)
    assert values["confusion"].numpy().tolist() == confusion_matrix(grades, pred).tolist()
    assert 0.5 < auroc < 1  # the fixture is informative, so the checks above mean something


def test_scalar_metrics_flattens_per_class_values():
    values = {
        "acc": torch.tensor(0.5),
        "recall": torch.tensor([0.1, 0.2]),
        "confusion": torch.eye(2),
    }
    assert scalar_metrics(values, "val/") == {
        "val/acc": 0.5,
        "val/recall_0": pytest.approx(0.1),
        "val/recall_1": pytest.approx(0.2),
    }
