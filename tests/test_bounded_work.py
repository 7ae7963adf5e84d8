"""Bounded work on files and data from others: score decoding in memory linear in the images,
special files (FIFO, devices) never opened, ``.npz`` files judged by what they decompress to,
and a report that one bad run folder cannot stop."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtcsnn.data.fundus_folder import read_labels
from mtcsnn.data.retinamnist import RetinaMNISTDataModule
from mtcsnn.data.untrusted import MAX_NPZ_BYTES, UnreadableFile, open_regular, read_text
from mtcsnn.errors import DataError
from mtcsnn.grading.score_decoding import pairwise_grades
from mtcsnn.inference.images import expand_inputs, read_all
from mtcsnn.report import main as report
from mtcsnn.reporting.comparing import comparisons, ensemble
from mtcsnn.reporting.grouping import NUM_CLASSES, group_runs
from mtcsnn.reporting.runs import collect_runs
from mtcsnn.run.files import predictions_csv

# --- helpers ------------------------------------------------------------------------------


class Blocked(BaseException):
    """Not an OSError nor an Exception: code that reads files cannot take it for a failure of
    one file and go on."""


@contextlib.contextmanager
def within(seconds: int):
    """Fails the test instead of hanging it (a FIFO opened for reading waits for a writer)."""

    def stop(*_):
        raise Blocked(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    # and again each second: code that catches the first one must not block for good
    signal.setitimer(signal.ITIMER_REAL, seconds, 1)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def reference_pairwise(scores, ref_scores, ref_grades, num_classes=5, difference="absolute"):
    """The grade minimising mean_r (score difference - grade difference)^2, pair by pair."""
    s, r, g = (np.asarray(t, dtype=np.float64) for t in (scores, ref_scores, ref_grades))
    d_score = s[:, None] - r[None]
    out = []
    for row in d_score:
        costs = []
        for k in range(num_classes):
            d_grade = k - g
            if difference == "absolute":
                costs.append(np.mean((np.abs(row) - np.abs(d_grade)) ** 2))
            else:
                costs.append(np.mean((row - d_grade) ** 2))
        out.append(int(np.argmin(costs)))
    return np.array(out)


# --- score decoding -----------------------------------------------------------------------


@pytest.mark.parametrize("difference", ["absolute", "signed"])
@pytest.mark.parametrize("chunk_elements", [1, 97, 1000, 1 << 20])
def test_pairwise_grades_are_those_of_the_direct_sum(difference, chunk_elements):
    rng = np.random.default_rng(chunk_elements)
    for n, r, k in ((1, 1, 5), (37, 101, 5), (250, 13, 3), (64, 200, 7)):
        scores = rng.normal(size=n) * 2
        ref_grades = rng.integers(0, k, r)
        ref_scores = ref_grades + rng.normal(size=r)
        got = pairwise_grades(
            torch.from_numpy(scores).float(),
            torch.from_numpy(ref_scores).float(),
            torch.from_numpy(ref_grades),
            num_classes=k,
            difference=difference,
            chunk_elements=chunk_elements,
        )
        expected = reference_pairwise(
            torch.from_numpy(scores).float().double(),
            torch.from_numpy(ref_scores).float().double(),
            ref_grades,
            k,
            difference,
        )
        assert got.tolist() == expected.tolist()


def test_exact_ties_are_decided_as_the_direct_sum_decides_them():
    # a score half-way between references of grades 0 and 1: both grades cost the same,
    # and the lower one is chosen, as by the direct sum; 1003 images: chunks of 4 do not divide
    ref_scores, ref_grades = torch.tensor([0.0, 1.0] * 50), torch.tensor([0, 1] * 50)
    scores = torch.full((1003,), 0.5)
    got = pairwise_grades(scores, ref_scores, ref_grades, chunk_elements=400)
    expected = reference_pairwise(scores, ref_scores, ref_grades)
    assert got.tolist() == expected.tolist() == [0] * 1003


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation makes."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("ties", [False, True])
def test_no_tensor_holds_images_times_references(ties):
    n, r, k, chunk = 3000, 2000, 5, 5000
    gen = torch.Generator().manual_seed(0)
    if ties:  # every image on a tie: all are decided by the direct sum, a chunk at a time
        ref_scores, ref_grades = (
            torch.tensor([0.0, 1.0] * (r // 2)),
            torch.tensor([0, 1] * (r // 2)),
        )
        scores = torch.full((n,), 0.5)
    else:
        ref_grades = torch.randint(0, k, (r,), generator=gen)
        ref_scores = ref_grades + torch.randn(r, generator=gen)
        scores = torch.randn(n, generator=gen) * 2
    with LargestTensor() as seen:
        pairwise_grades(scores, ref_scores, ref_grades, num_classes=k, chunk_elements=chunk)
    # linear in the images and references (K + 1 rows of either), or one chunk: never n x r
    assert seen.largest <= max(chunk, (k + 1) * (max(n, r) + 1)) < n * r


# Peak memory from /proc (VmHWM, reset through clear_refs), not getrusage: ru_maxrss survives
# exec, so a child of a large pytest worker would start at the worker's size.
MEMORY_SCRIPT = """
import time, torch
from mtcsnn.grading.score_decoding import pairwise_grades

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

n = 100_000
gen = torch.Generator().manual_seed(0)
grades = torch.randint(0, 5, (n,), generator=gen)
refs = grades + torch.randn(n, generator=gen)
scores = torch.randint(0, 5, (n,), generator=gen) + torch.randn(n, generator=gen)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from what is held now
before = status_mb("VmRSS")
start = time.perf_counter()
for difference in ("absolute", "signed"):
    pairwise_grades(scores, refs, grades, difference=difference)
peak = status_mb("VmHWM")
print(peak - before, peak, time.perf_counter() - start)
"""


@pytest.mark.slow
def test_100000_images_against_100000_references_decode_in_little_memory():
    """The direct sum would hold 100,000 x 100,000 doubles (80 GB) per intermediate."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    added_mb, peak_mb, seconds = map(float, out.stdout.split())
    assert added_mb < 500 and peak_mb < 2048, out.stdout
    assert seconds < 60, out.stdout


# --- special files ------------------------------------------------------------------------


def test_open_regular_never_opens_a_special_file(tmp_path):
    pipe = fifo(tmp_path / "pipe")
    with within(10):
        for path, kind in ((pipe, "FIFO"), ("/dev/null", "character device"), (tmp_path, "folder")):
            with pytest.raises(UnreadableFile, match=kind):
                open_regular(path)
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * 101)
    with pytest.raises(UnreadableFile, match="more than the 100 bytes allowed"):
        read_text(big, 100)
    assert read_text(big, 101) == "x" * 101


def test_a_fifo_or_device_among_predict_inputs_is_skipped_with_its_reason(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((30, 30, 3), 90, dtype=np.uint8)).save(folder / "good.png")
    fifo(folder / "waiting.png")
    lone = fifo(tmp_path / "lone.jpg")
    npz = fifo(tmp_path / "set.npz")
    with within(20):
        sources, failures = expand_inputs([str(folder), str(lone), str(npz), "/dev/null"])
        results = list(read_all(sources, 16, progress=False))
    assert [s.path.name for s in sources] == ["good.png"]
    assert all(image is not None for _, image, _ in results)
    reasons = dict(failures)
    assert "FIFO" in reasons[str(folder / "waiting.png")]
    assert "FIFO" in reasons[str(lone)] and "FIFO" in reasons[str(npz)]
    assert "character device" in reasons["/dev/null"]


def test_a_labels_file_that_is_a_fifo_or_a_device_is_one_clear_error(tmp_path):
    pipe = fifo(tmp_path / "labels.csv")
    with within(10):
        for path, kind in ((pipe, "FIFO"), (Path("/dev/null"), "character device")):
            with pytest.raises(DataError, match=f"cannot read the labels file .*{kind}"):
                read_labels(path)


def test_a_photograph_in_a_labels_csv_that_is_a_fifo_is_one_error_naming_its_line(tmp_path):
    from PIL import Image

    from mtcsnn.data.fundus_folder import FundusFolderDataModule

    rows = ["path,grade"]
    for i in range(20):
        Image.new("RGB", (40, 40), (40 + 10 * i, 20, 20)).save(tmp_path / f"eye_{i}.png")
        rows.append(f"eye_{i}.png,{i % 5}")
    fifo(tmp_path / "eye_pipe.png")
    rows.append("eye_pipe.png,1")  # line 22
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    module = FundusFolderDataModule(labels=str(tmp_path / "labels.csv"), size=28)
    with within(10), pytest.raises(DataError, match="line 22: cannot read eye_pipe.png.*FIFO"):
        module.prepare_data()


# --- .npz files counted by decoded bytes --------------------------------------------------


def crafted_npz(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]], data: int = 64):
    """An .npz whose headers describe ``arrays`` (shape, dtype), each holding ``data`` bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, (shape, descr) in arrays.items():
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": descr, "fortran_order": False, "shape": shape}
            )
            archive.writestr(f"{key}.npy", header.getvalue() + b"\0" * data)
    return path


GiB = 1024**3


def bad_caches(count: int) -> dict:
    """Planted caches of a folder of ``count`` photographs: none may be used."""
    return {
        "too large": {"images": ((count, 60000, 60000, 3), "|u1")},
        "pickled": {k: ((count,), "|O") for k in ("images", "grades", "splits", "paths")},
        "other shapes": {
            "images": ((count, 5, 5, 3), "|u1"),
            "grades": ((count,), "<i8"),
            "splits": ((count,), "<U5"),
            "paths": ((count,), "<U20"),
        },
    }


@pytest.mark.parametrize("case", list(bad_caches(20)))
def test_a_planted_or_damaged_cache_is_not_used_and_the_photographs_are_prepared(
    tmp_path, case, caplog
):
    from PIL import Image

    from mtcsnn.data.fundus_folder import FundusFolderDataModule

    rows = ["path,grade"]
    for i in range(20):
        Image.new("RGB", (40, 40), (40 + 10 * i, 20, 20)).save(tmp_path / f"eye_{i}.png")
        rows.append(f"eye_{i}.png,{i % 5}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    first = FundusFolderDataModule(labels=str(tmp_path / "labels.csv"), size=28).arrays()
    (cache,) = (tmp_path / ".mtcsnn_cache").glob("*.npz")
    cache.unlink()
    if case == "other shapes":  # a whole, readable cache of other arrays
        arrays = {k: np.zeros(shape, dtype=d) for k, (shape, d) in bad_caches(20)[case].items()}
        np.savez(cache, **arrays)
    else:
        crafted_npz(cache, bad_caches(20)[case])
    with within(60):
        again = FundusFolderDataModule(labels=str(tmp_path / "labels.csv"), size=28).arrays()
    assert np.array_equal(again["images"], first["images"])
    assert np.array_equal(again["grades"], first["grades"])
    assert "not using the cache" in caplog.text


# each array under 2 GiB, together 4.5 GiB: more than predict or a data module may hold
SPLIT_BOMB = {
    f"{split}_images": ((int(1.5 * GiB) // (224 * 224 * 3), 224, 224, 3), "|u1")
    for split in ("train", "val", "test")
}


def test_predict_refuses_an_npz_whose_arrays_together_decompress_to_too_much(tmp_path):
    path = crafted_npz(tmp_path / "split.npz", SPLIT_BOMB)
    sources, failures = expand_inputs([str(path)])
    assert sources == []
    ((_, reason),) = failures
    assert "decompressed" in reason and f"{MAX_NPZ_BYTES // GiB} GiB allowed" in reason


def test_predict_refuses_an_npz_whose_header_promises_more_than_it_holds(tmp_path):
    # 30 MB promised, 64 bytes there: refused before anything is allocated or decompressed
    path = crafted_npz(tmp_path / "short.npz", {"test_images": ((200, 224, 224, 3), "|u1")})
    sources, failures = expand_inputs([str(path)])
    assert sources == []
    ((_, reason),) = failures
    assert "header describes" in reason and "64 bytes" in reason


def retinamnist_arrays(tmp_path: Path, arrays: dict) -> RetinaMNISTDataModule:
    labels = {f"{s}_labels": ((10, 1), "<i8") for s in ("train", "val", "test")}
    crafted_npz(tmp_path / "retinamnist.npz", {**arrays, **labels}, data=80)
    return RetinaMNISTDataModule(root=str(tmp_path), download=False, verify_md5=False)


def test_the_retinamnist_module_refuses_an_npz_too_large_together_from_its_headers(tmp_path):
    each = int(1.5 * GiB) // (28 * 28 * 3)  # under 2 GiB each, 4.5 GiB together
    arrays = {f"{s}_images": ((each, 28, 28, 3), "|u1") for s in ("train", "val", "test")}
    dm = retinamnist_arrays(tmp_path, arrays)
    with pytest.raises(DataError, match=r"retinamnist.npz: its arrays would take 4.5 GiB"):
        dm.setup()


def test_the_retinamnist_module_never_opens_a_fifo(tmp_path):
    fifo(tmp_path / "retinamnist.npz")
    for verify in (True, False):
        dm = RetinaMNISTDataModule(root=str(tmp_path), download=False, verify_md5=verify)
        with within(10), pytest.raises(DataError, match="FIFO"):
            dm.setup()


# --- the report ---------------------------------------------------------------------------


def write_run(
    folder: Path, loss: str, seed: int, grades: np.ndarray, test_data=None, classes: int = 5
) -> Path:
    rng = np.random.default_rng(seed)
    skill = 2.0 if loss == "mtcsnn" else 0.5
    logits = rng.normal(size=(len(grades), classes)) + skill * np.eye(classes)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
    metrics = {
        "val": {"auroc": 0.7, "acc": 0.5, "kappa": 0.5, "mae": 0.8},
        "test": {"auroc": 0.7, "acc": 0.5, "kappa": 0.4, "mae": 0.9},
        "test_confusion": np.eye(classes, dtype=int).tolist(),
        "seed": seed,
        "choices": {"loss": loss},
        "config": {"seed": seed, "loss": {"lam": 0.5} if loss == "mtcsnn" else {}},
    }
    if test_data:
        metrics["test_data"] = test_data
    (folder / "metrics.json").write_text(json.dumps(metrics))
    predictions = {
        "index": torch.arange(len(grades)),
        "grade": torch.from_numpy(grades),
        "probs": torch.from_numpy(probs).float(),
        "score": torch.zeros(len(grades)),
    }
    (folder / "test_predictions.csv").write_text(predictions_csv(predictions))
    return folder


GRADES = np.arange(60) % 5


@pytest.fixture
def sweep(tmp_path) -> Path:
    jobs = [(loss, seed) for loss in ("ce", "mtcsnn") for seed in (1, 2, 3)]
    for job, (loss, seed) in enumerate(jobs):
        write_run(tmp_path / str(job), loss, seed, GRADES, test_data="sha256:same")
    return tmp_path


def damage(path: Path, how: str) -> None:
    lines = path.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    cells = [row.split(",") for row in rows]
    if how == "duplicate index":
        cells[7][0] = cells[6][0]
    elif how == "missing row":
        del cells[10]
    elif how == "shifted indices":
        for row in cells:
            row[0] = str(int(row[0]) + 1)
    elif how in ("nan", "inf", "-inf"):
        cells[3][4] = how
    elif how == "not summing to 1":
        cells[3][3:8] = ["0.1"] * 5
    elif how == "grade of no column":
        cells[3][1] = "5"
    path.write_text("\n".join([header, *(",".join(row) for row in cells)]) + "\n")


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("duplicate index", "index 6 appears twice"),
        ("missing row", "rows missing or shifted"),
        ("shifted indices", "rows missing or shifted"),
        ("nan", "prob_1 is nan, not a finite probability"),
        ("inf", "prob_1 is inf"),
        ("-inf", "prob_1 is -inf"),
        ("not summing to 1", "sum to 0.5, not 1"),
        ("grade of no column", "grade 5 is not one of 0..4"),
    ],
)
def test_a_run_with_bad_test_predictions_is_skipped_and_the_others_reported(
    sweep, how, reason, capsys
):
    damage(sweep / "4" / "test_predictions.csv", how)
    runs, skipped = collect_runs(sweep)
    assert len(runs) == 5
    ((path, why),) = skipped
    assert path.name == "4" and why.startswith("test_predictions.csv unusable") and reason in why
    assert report([str(sweep), "--bootstrap", "50"]) == 0
    assert f"skipped {sweep / '4'}: test_predictions.csv unusable" in capsys.readouterr().err
    results = (sweep / "results.md").read_text()
    assert "+nan" not in results and "| 3 |" in results.split("## MTCSNN vs CE")[1]


def test_a_run_whose_rows_are_shifted_against_the_others_is_set_apart(sweep):
    # the same recorded test data, but the grade column moved down one row: other images
    write_run(sweep / "6", "mtcsnn", 4, np.roll(GRADES, 1), test_data="sha256:same")
    runs, skipped = collect_runs(sweep)
    assert [p.name for p, _ in skipped] == ["6"]
    assert "holds other grades, row by row, than the 6 runs" in skipped[0][1]
    assert report([str(sweep), "--bootstrap", "50"]) == 0


def test_runs_pair_and_ensemble_only_on_the_same_rows_and_grades(sweep):
    # no fingerprint recorded (older runs): a run of shifted rows and runs of 7 grades stay,
    # but pair with nothing and join no ensemble (listed first, so they are what a group sees
    # first)
    for job in range(6):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        del metrics["test_data"]
        (sweep / str(job) / "metrics.json").write_text(json.dumps(metrics))
    write_run(sweep / "00", "mtcsnn", 4, np.roll(GRADES, 1))
    write_run(sweep / "01", "ce", 4, GRADES, classes=7)
    write_run(sweep / "02", "mtcsnn", 4, GRADES, classes=7)
    runs, skipped = collect_runs(sweep)
    assert len(runs) == 9 and not skipped
    groups = group_runs(runs)
    # runs of 7 grades are a configuration of their own, compared with their own CE
    five, seven = (
        {dict(c)["choices.loss"]: r for c, r in groups.items() if (NUM_CLASSES, k) in c}
        for k in (5, 7)
    )
    assert [r.path.name for r in seven["ce"] + seven["mtcsnn"]] == ["01", "02"]
    rows = {len(row["pairs"][0][0].probs[0]): row for row in comparisons(groups, 20)}
    assert rows[7]["seeds"] == 1
    assert rows[5]["seeds"] == 3 and {a.path.name for a, _ in rows[5]["pairs"]} == {"3", "4", "5"}
    for loss, names in (("mtcsnn", ["3", "4", "5"]), ("ce", ["0", "1", "2"])):
        members, grades, probs = ensemble(five[loss])
        assert sorted(r.path.name for r in members) == names
        assert np.array_equal(grades, GRADES) and probs.shape == (len(GRADES), 5)
    assert report([str(sweep), "--bootstrap", "50"]) == 0


@pytest.mark.parametrize(
    "name",
    [
        "metrics.json",
        "test_predictions.csv",
        "failed.json",
        ".hydra/overrides.yaml",
        "val_predictions.csv",
        "csv/metrics.csv",
    ],
)
def test_a_fifo_in_a_run_folder_never_blocks_the_report(sweep, name):
    target = sweep / "2" / name
    if name == "failed.json":
        (sweep / "2" / "metrics.json").unlink()
    target.unlink(missing_ok=True)
    fifo(target)
    with within(60):
        runs, skipped = collect_runs(sweep)
        assert report([str(sweep), "--bootstrap", "20"]) == 0
    if name in ("metrics.json", "test_predictions.csv", "failed.json"):
        ((path, why),) = skipped
        assert path.name == "2" and "FIFO" in why and name.split("/")[-1] in why
    else:  # a file the run can do without: the run still counts
        assert len(runs) == 6 and not skipped
