"""Runs that fail cleanly: divergence, bad data files, and the same numbers from the same seed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from mtcsnn.data import RetinaMNISTDataModule
from mtcsnn.errors import DataError, DivergenceError
from mtcsnn.losses import MultiTaskLoss
from mtcsnn.run.training import train


class NanAfterFourSteps(MultiTaskLoss):
    """The MTCSNN loss, turned NaN from the fifth training step on (a stand-in divergence)."""

    calls = 0

    def forward(self, out_a, out_b, grade_a, grade_b):
        terms = super().forward(out_a, out_b, grade_a, grade_b)
        NanAfterFourSteps.calls += 1
        if NanAfterFourSteps.calls > 4:
            terms["loss"] = terms["loss"] * torch.tensor(float("nan"))
        return terms


def test_divergence_stops_with_epoch_and_step_and_keeps_the_best_checkpoint(tiny_cfg, tmp_path):
    NanAfterFourSteps.calls = 0
    # 40 images, 8 pairs a batch: 3 steps an epoch, so step 4 is in the second epoch
    cfg = tiny_cfg("loss._target_=test_robustness.NanAfterFourSteps", "trainer.max_epochs=4")
    with pytest.raises(DivergenceError, match=r"loss is nan at epoch 2, step 4"):
        train(cfg)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [
        "epoch_001.ckpt"
    ]  # the first epoch's
    assert not (tmp_path / "metrics.json").exists()


def test_same_config_and_seed_give_identical_numbers(tiny_cfg, tmp_path):
    written = []
    for _ in range(2):
        train(tiny_cfg("seed=11", "trainer.deterministic=true"))
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        written.append(
            (
                metrics["val"],
                metrics["test"],
                metrics["best_epoch_number"],
                (tmp_path / "test_predictions.csv").read_text(),
            )
        )
    assert written[0] == written[1]


@pytest.mark.slow
def test_a_failing_sweep_job_is_recorded_and_the_others_still_run(tmp_path):
    from helpers.cli import ONE_SMALL_EPOCH, run_train

    from mtcsnn.report import main as report_main

    sweep = tmp_path / "sweep"
    proc = run_train(
        "--multirun",
        "experiment=smoke",
        "data.num_train=1,40",  # one image cannot form a pair: job 0 fails
        *ONE_SMALL_EPOCH,
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 1
    assert "1 of 2 sweep jobs failed" in proc.stderr
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert "cannot form pairs" in failed["error"]
    assert not (sweep / "0" / "metrics.json").exists()
    assert (sweep / "1" / "metrics.json").exists()  # the job after the failure ran
    assert report_main([str(sweep), "--bootstrap", "20"]) == 0
    text = (sweep / "results.md").read_text()
    assert "## Failed runs" in text and "cannot form pairs" in text.split("## Failed runs")[1]


# --- bad data files -----------------------------------------------------------------------

GOOD = {
    f"{split}_{key}": value
    for split, n in (("train", 6), ("val", 3), ("test", 3))
    for key, value in (
        ("images", np.zeros((n, 28, 28, 3), dtype=np.uint8)),
        ("labels", (np.arange(n) % 5).reshape(-1, 1)),
    )
}


def bad_file(folder, **changes):
    arrays = {k: v for k, v in GOOD.items() if changes.get(k, "keep") is not None}
    arrays.update({k: v for k, v in changes.items() if v is not None})
    np.savez(folder / "retinamnist.npz", **arrays)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"val_labels": None}, "lacks val_labels"),
        (
            {"test_images": np.zeros((3, 32, 32, 3), dtype=np.uint8)},
            "test_images is uint8 (3, 32, 32, 3)",
        ),
        ({"train_images": np.zeros((6, 28, 28, 3), dtype=np.float32)}, "expected uint8"),
        ({"train_labels": np.array([[0], [1], [2], [3], [4], [7]])}, "grades 0..7"),
        ({"val_labels": np.zeros((2, 1))}, "2 entries for 3 images"),
        ({"val_labels": np.array([[0.0], [np.nan], [2.0]])}, "not whole grades"),
        ({"val_labels": np.array([[0.0], [1.5], [2.0]])}, "not whole grades"),
        ({"val_labels": np.array([[0.0], [np.inf], [2.0]])}, "not whole grades"),
    ],
)
def test_bad_npz_contents_give_one_clear_error(tmp_path, changes, message):
    bad_file(tmp_path, **changes)
    dm = RetinaMNISTDataModule(root=str(tmp_path), download=False, verify_md5=False)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        dm.setup()
    assert "retinamnist.npz" in str(err.value)


def test_altered_or_truncated_file_fails_the_md5_check_and_stays(tmp_path, real_data_dir):
    original = (real_data_dir / "retinamnist.npz").read_bytes()
    for name, content in (
        ("truncated", original[: len(original) // 2]),
        ("altered", original[:-1] + b"x"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "retinamnist.npz").write_bytes(content)
        dm = RetinaMNISTDataModule(root=str(folder), download=False)
        with pytest.raises(DataError, match="is not the official bd4c0672"):
            dm.setup()
        assert (folder / "retinamnist.npz").read_bytes() == content  # nothing overwritten


def test_truncated_file_without_md5_check_is_still_refused_clearly(tmp_path):
    bad_file(tmp_path)
    content = (tmp_path / "retinamnist.npz").read_bytes()
    (tmp_path / "retinamnist.npz").write_bytes(content[: len(content) // 2])
    dm = RetinaMNISTDataModule(root=str(tmp_path), download=False, verify_md5=False)
    with pytest.raises(DataError, match="cannot be read as a .npz file"):
        dm.setup()


def test_cli_bad_data_is_one_line_without_traceback(tmp_path):
    from helpers.cli import run_train

    bad_file(tmp_path, train_labels=np.array([[0], [1], [2], [3], [4], [9]]))
    proc = run_train(
        f"data.root={tmp_path}",
        "data.download=false",
        "data.verify_md5=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "grades 0..9" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- misspelt keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["loss.lamda=1"], "loss.lamda is not a key of loss; did you mean loss.lam?"),
        (["loss=ce", "loss.lam=1"], "loss.lam is not a key of loss; allowed: _target_"),
        (
            ["--multirun", "model=resnet18,resnet34", "model.net.backbon=x"],
            "did you mean model.net.backbone?",
        ),
    ],
)
def test_misspelt_keys_are_refused_before_training_with_the_allowed_keys(tmp_path, args, expected):
    from helpers.cli import run_train

    proc = run_train(*args, f"hydra.run.dir={tmp_path}", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "0").exists()


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ("train", ["seeds=3"], "seeds is not a key of the top level; did you mean seed?"),
        # one code path for every command (run/cli.py): a tool stands for the others
        ("predict", ["ckpt_path=x.ckpt", "inputs=[a.png]", "out=p.csv"], "did you mean output?"),
    ],
)
def test_misspelt_top_level_keys_are_refused_by_every_command(tmp_path, command, args, expected):
    from helpers.cli import run_module

    proc = run_module(f"mtcsnn.{command}", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: config error: ") and expected in line
    assert not (tmp_path / "run").exists()  # refused before Hydra made the run's folder


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model=resnet19"], "model=resnet19 is not an option; did you mean resnet18? choose one"),
        (["model/optimizer=adamx"], "did you mean adam? choose one of: adam, adamw, sgd"),
        (["--multirun", "loss=ce,mtcsn"], "loss=mtcsn is not an option; did you mean mtcsnn?"),
        (["experiment=null"], "to leave the group out, do not name it or write ~experiment;"),
    ],
)
def test_an_unknown_group_option_is_one_line_with_the_options(tmp_path, args, expected):
    from helpers.cli import run_train

    proc = run_train(*args, f"hydra.run.dir={tmp_path}", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()  # Hydra printed a dozen lines, or a traceback
    assert line.startswith("error: config error: ") and expected in line


def test_keys_of_a_nested_group_choice_are_known():
    from mtcsnn.run.cli import unknown_key_message, unknown_option_message

    args = ["model/optimizer=sgd", "model.optimizer.momentum=0.8", "model/scheduler=cosine"]
    assert unknown_option_message(args) is None
    assert unknown_key_message([*args, "model.scheduler.T_max=5"], "train") is None
    assert "did you mean model.optimizer.momentum?" in unknown_key_message(
        ["model/optimizer=sgd", "model.optimizer.momentun=0.8"], "train"
    )


def test_a_write_that_fails_halfway_leaves_the_old_file_whole(tmp_path, monkeypatch):
    import os

    from mtcsnn.run.files import write_json

    path = tmp_path / "metrics.json"
    write_json(path, {"test": {"auroc": 0.7}})
    before = path.read_text()

    def fail(fd):  # the disk fails after the new text was handed over
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"test": {"auroc": 0.9}, "padding": "x" * 100_000})
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_a_seed_outside_numpys_range_is_refused(tiny_cfg, seed):
    from mtcsnn.errors import ConfigError
    from mtcsnn.run.checks import check_config

    cfg = tiny_cfg()
    cfg.seed = seed
    with pytest.raises(ConfigError, match=r"seed=.* it must be an integer from 0 to 4294967295"):
        check_config(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_asked_for_where_there_is_none_is_one_config_error(tiny_cfg):
    from mtcsnn.errors import ConfigError
    from mtcsnn.inference.batch import pick_device
    from mtcsnn.run.checks import check_config

    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        check_config(tiny_cfg("trainer.accelerator=gpu"))
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="choose one of: auto, cpu, cuda"):
        pick_device("tpu")


def test_the_divergence_message_names_the_term_its_setting_and_the_checkpoint_truthfully():
    from mtcsnn.models.lit_module import divergence_message

    inf, nan = torch.tensor(float("inf")), torch.tensor(float("nan"))
    one = torch.tensor(1.0)
    exploded = divergence_message({"loss": inf, "ce_a": one, "ce_b": one, "reg": inf}, 3, 40, 2, "")
    assert "term reg = inf" in exploded and "loss.lam" in exploded
    assert "no checkpoint was written" in exploded and "kept" not in exploded
    ce = divergence_message({"loss": nan, "ce_a": nan, "ce_b": one}, 1, 4, 0, "/r/epoch_000.ckpt")
    assert "model.optimizer.lr" in ce and "kept: /r/epoch_000.ckpt" in ce
    # all terms finite, their sum not: the largest term is the one to tame
    big = torch.tensor(3e38)
    summed = divergence_message({"loss": inf, "ce_a": one, "reg": big}, 0, 1, 1, "")
    assert "loss.lam" in summed


class FullDiskFromEpoch(pl.Callback):
    """Every file write fails with ENOSPC from epoch 1 on, as on a disk that just filled."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            self.fill()

    @staticmethod
    def fill() -> None:
        import errno
        import os

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        FullDiskFromEpoch.restore = os.fsync
        os.fsync = full


class FullDiskAtTrainEnd(FullDiskFromEpoch):
    """Every file write fails with ENOSPC once the last epoch is over."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pass

    def on_train_end(self, trainer, pl_module) -> None:
        self.fill()


# the disk fills during epoch 1 (a checkpoint's write fails first), or after the last epoch
# (the val predictions' write fails)
@pytest.mark.parametrize(
    ("disk", "first_write", "kept_epoch"),
    [("FullDiskFromEpoch", "checkpoints", 0), ("FullDiskAtTrainEnd", "val_predictions.csv", 2)],
)
def test_a_full_disk_ends_the_run_in_one_line_and_keeps_the_last_good_checkpoint(
    tiny_cfg, tmp_path, disk, first_write, kept_epoch
):
    import os

    from mtcsnn.errors import WriteError

    cfg = tiny_cfg(
        "callbacks.last_checkpoint.every_n_epochs=1",
        f"+callbacks.disk._target_=test_robustness.{disk}",
        "trainer.max_epochs=3",
    )
    try:
        with pytest.raises(WriteError, match="No space left on device") as err:
            train(cfg)
    finally:
        os.fsync = FullDiskFromEpoch.restore
    assert "\n" not in str(err.value) and first_write in str(err.value)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names[-1] == "last.ckpt" and len(names) == 2  # no temporary or truncated file
    for name in names:  # both whole
        state = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
    assert state["epoch"] == kept_epoch  # last.ckpt
    assert not (tmp_path / "metrics.json").exists()
    assert not list(tmp_path.glob("val_predictions.csv*")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_a_write_the_kernel_refuses_mid_checkpoint_ends_the_run_in_one_line(tmp_path):
    """A real failed write, not a stub: under a file size limit (``ulimit -f``) the kernel
    refuses the checkpoint's bytes, as a full disk does, and PyTorch's writer reports that as
    its own ``[enforce fail ...] unexpected pos``, which must still end in our one line."""
    import os
    import shlex
    import subprocess
    import sys

    train_command = shlex.join(
        [
            sys.executable,
            "-m",
            "mtcsnn.train",
            "data=synthetic",
            "data.num_train=32",
            "data.num_val=20",
            "data.num_test=20",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={tmp_path}",
        ]
    )
    # 2 MiB per file: the logs fit, a checkpoint (tens of MB) does not; SIGXFSZ is ignored so
    # the write fails with EFBIG instead of killing the process
    done = subprocess.run(
        ["bash", "-c", f"trap '' XFSZ; ulimit -f 2048; exec {train_command}"],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
        timeout=600,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "inline_container" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert re.fullmatch(r"error: cannot write \S+checkpoints/\S+\.ckpt: File too large", line)
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written checkpoint left behind
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed["error"] == line.removeprefix("error: ")


def test_only_a_failed_write_behind_a_librarys_error_is_called_one():
    import errno

    from mtcsnn.writing import failed_write

    def raised_while_handling(first: BaseException, then: BaseException) -> BaseException:
        try:
            try:
                raise first
            except BaseException:
                raise then  # noqa: B904 (raised while handling: that context is the point)
        except BaseException as err:
            return err

    full = OSError(errno.ENOSPC, "No space left on device")
    wrapped = raised_while_handling(full, RuntimeError("unexpected pos 704 vs 598"))
    assert failed_write(wrapped) is full
    assert failed_write(full) is full
    # a library that looked for a file and then failed for another reason did not fail a write
    missing = raised_while_handling(FileNotFoundError(errno.ENOENT, "x"), ValueError("bad"))
    assert failed_write(missing) is None
    assert failed_write(raised_while_handling(full, KeyboardInterrupt())) is None


def test_a_write_the_disk_refused_anywhere_in_a_run_is_reported_in_one_line():
    """Not only our own files: a library's log writer meeting a full disk ends a single run
    with ``error: cannot write <file>: ...``, and a sweep job's failed.json says the same."""
    import errno

    from mtcsnn.errors import WriteError
    from mtcsnn.run.failures import our_error

    log = OSError(errno.ENOSPC, "No space left on device", "/r/csv/metrics.csv")
    reported = our_error(log)
    assert isinstance(reported, WriteError)
    assert str(reported) == "cannot write /r/csv/metrics.csv: No space left on device"
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904
    except RuntimeError as wrapped:
        assert str(our_error(wrapped)) == "cannot write: Disk quota exceeded"
    # other OS errors are not failed writes: they stay what they are
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x.npz")
    assert our_error(missing) is missing


@pytest.mark.parametrize(
    ("config_name", "override", "expected"),
    [
        ("eval", "data_rot=d", "did you mean data_root?"),
        ("explain", "max_image=3", "did you mean max_images?"),
        ("export", "formats=onnx", "did you mean format?"),
        ("train", "model.net.dropuot=0.3", "did you mean model.net.dropout?"),
    ],
)
def test_every_commands_config_refuses_a_misspelt_key(config_name, override, expected):
    from mtcsnn.run.cli import unknown_key_message

    given = [] if config_name == "train" else ["ckpt_path=x.ckpt"]  # a key of the tools only
    message = unknown_key_message([override, *given], config_name)
    assert message is not None and expected in message
    assert unknown_key_message(given, config_name) is None


def test_the_divergence_watch_keeps_the_first_bad_step_until_it_is_read():
    from mtcsnn.models.lit_module import DivergenceWatch

    watch = DivergenceWatch()
    one, nan, inf = torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(float("inf"))
    watch.record({"loss": one, "ce_a": one}, step=0, batch_idx=0)
    assert watch.diverged() is None
    watch.record({"loss": inf, "ce_a": inf}, step=7, batch_idx=2)
    watch.record({"loss": nan, "ce_a": nan}, step=8, batch_idx=3)  # later: not the culprit
    watch.record({"loss": one, "ce_a": one}, step=9, batch_idx=4)
    terms, step, batch_idx = watch.diverged()
    assert (step, batch_idx) == (7, 2)
    assert set(terms) == {"loss", "ce_a"} and torch.isinf(terms["loss"])
