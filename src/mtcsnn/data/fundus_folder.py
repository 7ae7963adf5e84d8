"""Your own fundus photographs: a folder of images and a CSV of their grades.

The CSV has the columns ``path,grade`` and optionally ``split`` (train/val/test); paths are
relative to the CSV. Without ``split``, a stratified split is drawn from ``split_seed`` and
written beside the cache, so it can be kept and reused. Each photograph is prepared once as
``predict`` prepares images (:func:`mtcsnn.data.fundus.prepare_image`, at ``size``) and the
result is cached as a uint8 ``.npz`` keyed by the CSV's contents, ``size`` and each file's size
and modification time: the second run reads one file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtcsnn.data.datamodule import SPLITS, PairDataModule
from mtcsnn.data.fundus import open_photo, prepare_image
from mtcsnn.data.untrusted import MAX_TABLE_BYTES, read_text
from mtcsnn.errors import ConfigError, DataError

log = logging.getLogger(__name__)
NUM_GRADES = 5
# bump when prepare_image changes: older caches then no longer match
PREPARATION_VERSION = 1


@dataclass(frozen=True)
class Columns:
    """Where a labels CSV keeps each photograph's file and grade (and, optionally, split).

    A file is ``prefix + <path column> + suffix``, relative to the CSV: APTOS 2019's
    ``train.csv`` is ``Columns("id_code", "diagnosis", prefix="train_images/", suffix=".png")``.
    """

    path: str = "path"
    grade: str = "grade"
    split: str = "split"
    prefix: str = ""
    suffix: str = ""


def read_labels(csv_path: Path, columns: Columns = Columns()) -> list[dict[str, str]]:
    """The rows of the labels CSV, checked: one DataError naming the first bad row.

    Read only if it is a regular file of at most MAX_TABLE_BYTES (``/dev/zero`` or a FIFO
    would never end)."""
    try:
        text = read_text(csv_path, MAX_TABLE_BYTES, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise DataError(f"cannot read the labels file {csv_path}: {reason}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [c.strip() for c in reader.fieldnames or []]
    if not {columns.path, columns.grade} <= set(header):
        raise DataError(
            f"{csv_path}: the header must name the columns {columns.path},{columns.grade}"
            f"[,{columns.split}] (data.path_column, data.grade_column); it has {header}"
        )
    rows = []
    for number, raw in enumerate(reader, start=2):  # line 1 is the header
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        grade = row.get(columns.grade, "")
        if not (grade.isdigit() and 0 <= int(grade) < NUM_GRADES):
            raise DataError(f"{csv_path} line {number}: grade {grade!r} is not a grade 0-4")
        if not row.get(columns.path):
            raise DataError(f"{csv_path} line {number}: no {columns.path}")
        split = row.get(columns.split, "")
        if columns.split in header and split not in SPLITS:
            raise DataError(
                f"{csv_path} line {number}: split {split!r} is not one of {', '.join(SPLITS)}"
            )
        path = columns.prefix + row[columns.path] + columns.suffix
        rows.append({"path": path, "grade": grade, "split": split, "line": str(number)})
    if not rows:
        raise DataError(f"{csv_path} lists no images")
    return rows


def stratified_split(
    grades: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """train/val/test per image, drawn from ``seed``: ``round(fraction x N)`` images for test
    and for val, each grade's share of them close to its share of the data (about one image).

    Each grade's images are shuffled and spread evenly over [0, 1); test takes the lowest
    positions of all grades together, val the next ones.
    """
    rng = np.random.default_rng(seed)
    position = np.empty(len(grades))
    for grade in np.unique(grades):
        members = rng.permutation(np.flatnonzero(grades == grade))
        position[members] = (np.arange(len(members)) + rng.random()) / len(members)
    order = np.argsort(position, kind="stable")
    n_test = int(round(test_fraction * len(grades)))
    n_val = int(round(val_fraction * len(grades)))
    splits = np.full(len(grades), "train", dtype=object)
    splits[order[:n_test]] = "test"
    splits[order[n_test : n_test + n_val]] = "val"
    return splits


class FundusFolderDataModule(PairDataModule):
    """Fundus photographs listed in ``labels`` (a CSV), prepared at ``size`` pixels.

    The CSV's column names and how its path column becomes a file name are set by
    ``path_column``, ``grade_column``, ``split_column``, ``path_prefix`` and ``path_suffix``
    (see :class:`Columns`), so public data sets' own label files are read as they come.
    """

    def __init__(
        self,
        labels: str,
        size: int = 128,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        cache_dir: str | None = None,
        path_column: str = "path",
        grade_column: str = "grade",
        split_column: str = "split",
        path_prefix: str = "",
        path_suffix: str = "",
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.check_size(size)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1 or val_fraction + test_fraction >= 1:
                raise ConfigError(
                    name, value, "fractions between 0 and 1 that leave images to train on"
                )
        self.labels = Path(labels).expanduser()
        self.size = size
        self.val_fraction, self.test_fraction, self.split_seed = (
            val_fraction,
            test_fraction,
            split_seed,
        )
        self.cache_dir = (
            Path(cache_dir).expanduser() if cache_dir else self.labels.parent / ".mtcsnn_cache"
        )
        self.columns = Columns(path_column, grade_column, split_column, path_prefix, path_suffix)
        self._arrays: dict[str, np.ndarray] | None = None

    def cache_key(self, rows: list[dict[str, str]]) -> str:
        digest = hashlib.sha256()
        digest.update(self.labels.read_bytes())
        digest.update(f"{self.size} {PREPARATION_VERSION}".encode())
        if not any(row["split"] for row in rows):
            digest.update(f"{self.val_fraction} {self.test_fraction} {self.split_seed}".encode())
        for row in rows:
            try:
                stat = (self.labels.parent / row["path"]).stat()
            except OSError as err:
                raise DataError(
                    f"{self.labels} line {row['line']}: cannot read {row['path']} "
                    f"({err.strerror or err})"
                ) from None
            digest.update(f"{row['path']} {stat.st_size} {stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def prepare(self, rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
        """Every photograph read and prepared, or one DataError naming the row."""
        images = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        for i, row in enumerate(rows):
            try:
                images[i] = np.asarray(
                    prepare_image(open_photo(self.labels.parent / row["path"]), self.size)
                )
            except Exception as err:  # any reason one photograph cannot be read
                raise DataError(
                    f"{self.labels} line {row['line']}: cannot read {row['path']} "
                    f"({type(err).__name__}: {err})"
                ) from None
        grades = np.array([int(row["grade"]) for row in rows], dtype=np.int64)
        if all(row["split"] for row in rows):
            splits = np.array([row["split"] for row in rows], dtype=object)
        else:
            splits = stratified_split(
                grades, self.val_fraction, self.test_fraction, self.split_seed
            )
        return {
            "images": images,
            "grades": grades,
            "splits": splits.astype(str),
            "paths": np.array([row["path"] for row in rows]),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The prepared data set: from the cache when the CSV and files are unchanged."""
        if self._arrays is not None:
            return self._arrays
        rows = read_labels(self.labels, self.columns)
        cache = self.cache_dir / f"{self.labels.stem}_{self.size}px_{self.cache_key(rows)}.npz"
        if cache.exists():
            with np.load(cache, allow_pickle=False) as npz:
                self._arrays = {key: npz[key] for key in npz.files}
            log.info("read %d prepared photographs from %s", len(rows), cache)
            return self._arrays
        arrays = self.prepare(rows)
        self._arrays = arrays
        try:
            self.write_cache(cache, arrays)
        except OSError as err:  # a read-only folder: the photographs are read again next time
            log.warning("cannot write the cache %s (%s); set data.cache_dir", cache, err)
        return arrays

    @staticmethod
    def write_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
        """The prepared arrays (whole or not at all) and the split of each photograph."""
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f".{cache.stem}.partial.npz")
        try:
            np.savez(partial, **arrays)
            os.replace(partial, cache)
        finally:
            partial.unlink(missing_ok=True)
        split_csv = cache.with_suffix(".splits.csv")
        with open(split_csv, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["path", "grade", "split"])
            writer.writerows(zip(arrays["paths"], arrays["grades"], arrays["splits"], strict=True))
        log.info(
            "prepared %d photographs into %s (splits: %s)", len(arrays["grades"]), cache, split_csv
        )

    def prepare_data(self) -> None:
        self.arrays()

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = self.arrays()
        chosen = arrays["splits"] == split
        if chosen.sum() < (2 if split == "train" else 1):
            raise DataError(f"{self.labels}: the {split} split holds {int(chosen.sum())} images")
        images = torch.from_numpy(arrays["images"][chosen]).permute(0, 3, 1, 2).contiguous()
        return images, torch.from_numpy(arrays["grades"][chosen])
