"""Your own fundus photographs: a folder of images and a CSV of their grades.

The CSV has the columns ``path,grade`` and optionally ``split`` (train/val/test); paths are
relative to the CSV. Without ``split``, a stratified split is drawn from ``split_seed`` and
written beside the cache, so it can be kept and reused. Each photograph is prepared once as
``predict`` prepares images (:func:`mtcsnn.data.fundus.prepare_image`, at ``size``) and the
result is cached as a uint8 ``.npz`` keyed by the CSV's contents, ``size`` and each file's size
and modification time: the second run reads one file.

A photograph is listed once: the same file under two spellings (``a.jpg``, ``./a.jpg``) or
byte-identical files under two names are one error naming the CSV lines, whatever their
grades (else it trains and is tested on itself). Val and test must each hold photographs of at
least two grades (:func:`~mtcsnn.data.datamodule.check_scorable`).
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
from PIL import Image

from mtcsnn.data import fundus
from mtcsnn.data.datamodule import SPLITS, PairDataModule, check_scorable
from mtcsnn.data.fundus import open_photo, prepare_image
from mtcsnn.data.untrusted import (
    MAX_IMAGE_FILE_BYTES,
    MAX_NPZ_BYTES,
    MAX_TABLE_BYTES,
    check_npz,
    open_regular,
    read_bytes,
    read_text,
)
from mtcsnn.errors import ConfigError, DataError
from mtcsnn.writing import csv_text, write_atomic, write_text_atomic

log = logging.getLogger(__name__)
NUM_GRADES = 5
# duplicate groups named in full in the error; more are counted
SHOWN_DUPLICATES = 5
# bump when prepare_image changes what a model sees: a model spec records it
PREPARATION_VERSION = 1
# bump when a cache's making changes: older caches then no longer match. 2: a cache is written
# only once no two rows hold identical files (older ones were not checked)
CACHE_VERSION = 2
# what a cache holds (see FundusFolderDataModule.prepare)
CACHE_ARRAYS = ("images", "grades", "splits", "paths")
GRADES = np.arange(NUM_GRADES)


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
    # one file however it is written: ./a.jpg, photos/../a.jpg, a symlink to it
    where = [os.path.realpath(csv_path.parent / row["path"]) for row in rows]
    check_duplicates(csv_path, rows, where, "the same photograph")
    return rows


def check_duplicates(
    csv_path: Path, rows: list[dict[str, str]], keys: list[object], what: str
) -> None:
    """One DataError naming the lines of every group of rows with the same key."""
    groups: dict[object, list[dict[str, str]]] = {}
    for row, key in zip(rows, keys, strict=True):
        groups.setdefault(key, []).append(row)
    repeated = [group for group in groups.values() if len(group) > 1]
    if not repeated:
        return
    described = [
        "lines "
        + ", ".join(row["line"] for row in group)
        + " ("
        + ", ".join(repr(row["path"]) for row in group)
        + ")"
        for group in repeated[:SHOWN_DUPLICATES]
    ]
    if len(repeated) > SHOWN_DUPLICATES:
        described.append(f"and {len(repeated) - SHOWN_DUPLICATES} more groups")
    raise DataError(
        f"{csv_path}: {what} is listed more than once: {'; '.join(described)}. List each "
        "photograph once, with its one grade (else it can be trained and tested on itself)"
    )


def read_photo(path: Path) -> tuple[bytes, Image.Image]:
    """The SHA-256 of a photograph's bytes and the photograph, read once, only from a regular
    file of bounded size (a FIFO or device listed in a CSV would never end)."""
    data = read_bytes(path, MAX_IMAGE_FILE_BYTES)
    return hashlib.sha256(data).digest(), open_photo(io.BytesIO(data))


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
        # bounded like read_labels: the file may have been swapped since it was read
        digest.update(read_bytes(self.labels, MAX_TABLE_BYTES))
        # the preparation's values too: a cache prepared with other values is not used
        prepared = f"{self.size} {PREPARATION_VERSION} {CACHE_VERSION} "
        prepared += str(fundus.PREPARATION.as_dict())
        digest.update(prepared.encode())
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
        """Every photograph read and prepared, or one DataError naming the row (an unreadable
        photograph, or byte-identical photographs on several rows)."""
        images = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        contents = []
        for i, row in enumerate(rows):
            path = self.labels.parent / row["path"]
            try:
                digest, photo = read_photo(path)
                contents.append(digest)
                images[i] = np.asarray(prepare_image(photo, self.size))
            except Exception as err:  # any reason one photograph cannot be read
                raise DataError(
                    f"{self.labels} line {row['line']}: cannot read {row['path']} "
                    f"({type(err).__name__}: {err})"
                ) from None
        check_duplicates(self.labels, rows, contents, "the same photograph (identical files)")
        grades = np.array([int(row["grade"]) for row in rows], dtype=np.int64)
        return {
            "images": images,
            "grades": grades,
            "splits": self.splits_of(rows).astype(str),
            "paths": np.array([row["path"] for row in rows]),
        }

    def splits_of(self, rows: list[dict[str, str]]) -> np.ndarray:
        """Each row's split: the CSV's split column, else drawn from ``split_seed``."""
        if all(row["split"] for row in rows):
            return np.array([row["split"] for row in rows], dtype=object)
        grades = np.array([int(row["grade"]) for row in rows], dtype=np.int64)
        return stratified_split(grades, self.val_fraction, self.test_fraction, self.split_seed)

    def check_splits(self, arrays: dict[str, np.ndarray], from_csv: bool) -> None:
        """Val and test each hold photographs of two grades or more: one line saying what to do."""
        advice = (
            "Change the CSV's split column so that they do, or add photographs"
            if from_csv
            else "Add photographs, raise data.val_fraction / data.test_fraction, or give the CSV "
            f"a {self.columns.split} column (train/val/test) that puts at least two grades in "
            "each of val and test"
        )
        check_scorable(
            {split: arrays["grades"][arrays["splits"] == split] for split in SPLITS},
            str(self.labels),
            advice,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The prepared data set: from the cache when the CSV and files are unchanged."""
        if self._arrays is not None:
            return self._arrays
        rows = read_labels(self.labels, self.columns)
        from_csv = all(row["split"] for row in rows)
        cache = self.cache_dir / f"{self.labels.stem}_{self.size}px_{self.cache_key(rows)}.npz"
        if cache.exists():
            arrays, problem = self.read_cache(cache, len(rows))
            if arrays is not None:
                self.check_splits(arrays, from_csv)
                self._arrays = arrays
                log.info("read %d prepared photographs from %s", len(rows), cache)
                return arrays
            log.warning(
                "not using the cache %s (%s); preparing the photographs again", cache, problem
            )
        arrays = self.prepare(rows)
        # before the cache is written: a split that cannot be scored leaves nothing behind
        self.check_splits(arrays, from_csv)
        self._arrays = arrays
        try:
            self.write_cache(cache, arrays)
        except OSError as err:  # a read-only folder: the photographs are read again next time
            log.warning("cannot write the cache %s (%s); set data.cache_dir", cache, err)
        return arrays

    def read_cache(self, cache: Path, count: int) -> tuple[dict[str, np.ndarray] | None, str]:
        """The cached arrays if they are what :meth:`prepare` writes for ``count`` rows, else
        None and why: a cache is only a shortcut, and a folder may come from someone else."""
        try:
            with open_regular(cache, MAX_NPZ_BYTES) as f:
                check_npz(f, CACHE_ARRAYS)
                f.seek(0)
                with np.load(f, allow_pickle=False) as npz:
                    arrays = {key: npz[key] for key in CACHE_ARRAYS}
        except Exception as err:  # unreadable, too large, pickled, a key missing, ...
            return None, f"{type(err).__name__}: {err}"
        images, grades = arrays["images"], arrays["grades"]
        shapes_fit = images.shape == (count, self.size, self.size, 3) and images.dtype == np.uint8
        shapes_fit = shapes_fit and all(len(arrays[k]) == count for k in CACHE_ARRAYS)
        if not (shapes_fit and grades.dtype.kind in "iu" and np.isin(grades, GRADES).all()):
            return None, "its arrays are not the prepared photographs of this CSV"
        return arrays, ""

    @staticmethod
    def write_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
        """The prepared arrays (whole or not at all) and the split of each photograph."""
        # whole or not at all, never through a symlink planted in the cache folder; paths
        # that a spreadsheet would run as formulas are escaped in the CSV
        write_atomic(cache, lambda f: np.savez(f, **arrays), binary=True)
        split_csv = cache.with_suffix(".splits.csv")
        rows = zip(arrays["paths"], arrays["grades"], arrays["splits"], strict=True)
        write_text_atomic(split_csv, csv_text(["path", "grade", "split"], rows))
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
