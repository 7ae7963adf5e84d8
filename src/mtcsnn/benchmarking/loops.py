"""Framework overhead, measured: the framework's training step against the same step written as
a bare PyTorch loop, on one composed train config (``python -m mtcsnn.bench``).

A benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from pytorch_lightning.profilers import PassThroughProfiler
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.functional.classification import multiclass_auroc

from mtcsnn.data import PairingFeedback
from mtcsnn.data.augment import augment
from mtcsnn.data.pairing import PairSampler
from mtcsnn.run.checkpoint import build_module
from mtcsnn.run.checks import check_config
from mtcsnn.run.config import CONFIG_PATH
from mtcsnn.run.training import set_threads

FETCH = "[_TrainingEpochLoop].train_dataloader_next"


@dataclass
class Timing:
    images: int
    seconds: float
    data_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def data_share(self) -> float:
        return self.data_seconds / self.seconds


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
    check_config(cfg)
    return cfg


def device_of(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype(cfg: DictConfig) -> torch.dtype | None:
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareTrainer:
    """The framework's training step written as a plain PyTorch loop, on the composed config."""

    def __init__(self, cfg: DictConfig) -> None:
        self.device = device_of(cfg)
        self.augment = cfg.data.augment
        self.dtype = autocast_dtype(cfg)
        pl.seed_everything(cfg.seed, verbose=False)
        module = build_module(cfg)  # the same network, loss head, optimiser and schedule
        self.net, self.loss_fn = module.net.to(self.device), module.loss
        if cfg.model.get("compile"):
            self.net.compile()
        configured = module.configure_optimizers()
        if isinstance(configured, dict):
            self.optimizer = configured["optimizer"]
            self.scheduler = configured["lr_scheduler"]["scheduler"]
        else:
            self.optimizer, self.scheduler = configured, None

    def _autocast(self):
        enabled = self.dtype is not None
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=enabled)

    def step(self, xa: torch.Tensor, xb: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor) -> None:
        xa = augment(xa.float().div_(255), self.augment)
        xb = augment(xb.float().div_(255), self.augment)
        with self._autocast():
            out_a, out_b = self.net.forward_pair(xa, xb)
            loss = self.loss_fn(out_a, out_b, ya, yb)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def auroc(self, images: torch.Tensor, grades: torch.Tensor, batch_size: int) -> float:
        """Macro one-vs-rest AUROC of one pass over a split, as the framework's metric."""
        self.net.eval()
        probs = []
        for chunk in images.split(batch_size):
            with self._autocast():
                probs.append(self.loss_fn.probabilities(self.net(chunk.float() / 255)).float())
        self.net.train()
        return float(multiclass_auroc(torch.cat(probs), grades, num_classes=5, average="macro"))


def bare_loop(cfg: DictConfig, datamodule, steps: int, warmup: int) -> Timing:
    """The same training step written as a plain PyTorch loop."""
    bare = BareTrainer(cfg)
    device = bare.device
    images, grades = datamodule.splits["train"]
    sampler = PairSampler(len(images), cfg.data.batch_size // 2, seed=cfg.seed)
    count = data_seconds = 0.0
    done, epoch, start = 0, 0, 0.0
    while done < warmup + steps:
        sampler.set_epoch(epoch)
        for pairs in sampler:
            if done == warmup:
                sync(device)
                start, count, data_seconds = time.perf_counter(), 0, 0.0
            t0 = time.perf_counter()
            a, b = pairs[:, 0], pairs[:, 1]
            xa, xb = images[a].to(device), images[b].to(device)
            ya, yb = grades[a].to(device), grades[b].to(device)
            data_seconds += time.perf_counter() - t0
            bare.step(xa, xb, ya, yb)
            count += 2 * len(pairs)
            done += 1
            if done == warmup + steps:
                break
        epoch += 1
    sync(device)
    return Timing(int(count), time.perf_counter() - start, data_seconds)


def bare_run(cfg: DictConfig, datamodule, epochs: int) -> dict:
    """A whole run as a plain loop: splits on the device, val every epoch, best-val tested."""
    bare = BareTrainer(cfg)
    on_device = {
        split: tuple(t.to(bare.device) for t in datamodule.splits[split])
        for split in ("train", "val", "test")
    }
    images, grades = on_device["train"]
    sampler = PairSampler(len(images), cfg.data.batch_size // 2, seed=cfg.seed)
    eval_batch = cfg.data.eval_batch_size
    best, best_state = -1.0, None
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for pairs in sampler:
            a, b = pairs.to(bare.device).unbind(1)
            bare.step(images[a], images[b], grades[a], grades[b])
        if bare.scheduler is not None:
            bare.scheduler.step()
        val = bare.auroc(*on_device["val"], eval_batch)
        if val > best:
            best, best_state = val, copy.deepcopy(bare.net.state_dict())
    if best_state is not None:
        bare.net.load_state_dict(best_state)
    return {"val_auroc": best, "test_auroc": bare.auroc(*on_device["test"], eval_batch)}


class FetchProfiler(PassThroughProfiler):
    """Times only the training loop's ``next(dataloader)``; every other action costs a compare."""

    def __init__(self) -> None:
        super().__init__()
        self.durations: list[float] = []
        self._t0 = 0.0

    def start(self, action_name: str) -> None:
        if action_name == FETCH:
            self._t0 = time.perf_counter()

    def stop(self, action_name: str) -> None:
        if action_name == FETCH:
            self.durations.append(time.perf_counter() - self._t0)


class StepClock(pl.Callback):
    """Wall clock at the end of every training step, and the images of each step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.images: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(pl_module.device)
        self.ends.append(time.perf_counter())
        self.images.append(2 * len(batch["grade_a"]))


def lightning_loop(cfg: DictConfig, datamodule, steps: int, warmup: int) -> Timing:
    """The framework's training step: the real module, data module and trainer config."""
    pl.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    clock, profiler = StepClock(), FetchProfiler()
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=[PairingFeedback(), clock],  # as in a run
        logger=False,
        profiler=profiler,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        max_epochs=-1,
        max_steps=warmup + steps,
    )
    trainer.fit(module, datamodule=datamodule)
    seconds = clock.ends[-1] - clock.ends[warmup - 1]
    # fetches are of the next batch: the ones in the window are those after the warmup steps
    data_seconds = sum(profiler.durations[warmup : warmup + steps])
    return Timing(sum(clock.images[warmup:]), seconds, data_seconds)


def flops_per_image(cfg: DictConfig, datamodule) -> float:
    """FLOPs (forward + backward, as counted by torch's FlopCounterMode) per training image."""
    device = device_of(cfg)
    net = instantiate(cfg.model.net).to(device)
    loss_fn = instantiate(cfg.loss)
    images, grades = datamodule.splits["train"]
    pairs = cfg.data.batch_size // 2
    x = images[: 2 * pairs].to(device).float() / 255
    y = grades[: 2 * pairs].to(device)
    with FlopCounterMode(display=False) as counter:
        out_a, out_b = net.forward_pair(x[:pairs], x[pairs:])
        loss_fn(out_a, out_b, y[:pairs], y[pairs:])["loss"].backward()
    return counter.get_total_flops() / (2 * pairs)


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of a large square matmul on ``device`` in ``dtype``."""
    n = 4096 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
            reps += 1
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def benchmark(overrides: list[str], steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(overrides, Path(tmp))
        set_threads(cfg)  # threads=N as in a run
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        device = device_of(cfg)
        # alternated, twice each, best of each: the first run also pays one-off warm-ups
        runs: dict[str, list[Timing]] = {"framework": [], "bare": []}
        for _ in range(2):
            runs["framework"].append(lightning_loop(cfg, datamodule, steps, warmup))
            runs["bare"].append(bare_loop(cfg, datamodule, steps, warmup))
        flops = flops_per_image(cfg, datamodule)
        peak_dtype = autocast_dtype(cfg) or torch.float32
        peak = matmul_peak(device, peak_dtype)
    best = max(runs["framework"], key=lambda t: t.images_per_s)
    bare = max(runs["bare"], key=lambda t: t.images_per_s)
    achieved = flops * best.images_per_s
    return {
        "overrides": overrides,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "backbone": cfg.model.net.backbone,
        "stem": cfg.model.net.stem,
        "size": cfg.data.size,
        "batch_size": cfg.data.batch_size,
        "precision": str(cfg.trainer.precision),
        "steps": steps,
        "bare": asdict(bare) | {"images_per_s": bare.images_per_s, "data_share": bare.data_share},
        "framework": asdict(best)
        | {"images_per_s": best.images_per_s, "data_share": best.data_share},
        "runs_images_per_s": {k: [t.images_per_s for t in v] for k, v in runs.items()},
        "ratio": best.images_per_s / bare.images_per_s,
        "gflop_per_image": flops / 1e9,
        "achieved_tflops": achieved / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        "peak_dtype": str(peak_dtype).removeprefix("torch."),
        "share_of_peak": achieved / peak,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def summary(r: dict) -> str:
    load = f"; {r['busy_processes']} busy processes" if r.get("busy_processes") else ""
    lines = [
        f"device: {r['device']} ({r['threads']} threads{load}); {r['backbone']} stem={r['stem']} "
        f"size={r['size']} batch={r['batch_size']} precision={r['precision']}; "
        f"{r['steps']} timed steps",
        f"  bare PyTorch loop : {r['bare']['images_per_s']:9.1f} images/s "
        f"(best of {', '.join(f'{v:.1f}' for v in r['runs_images_per_s']['bare'])})",
        f"  mtcsnn + Lightning: {r['framework']['images_per_s']:9.1f} images/s "
        f"(best of {', '.join(f'{v:.1f}' for v in r['runs_images_per_s']['framework'])})",
        f"  ratio framework/bare: {r['ratio']:.3f}",
        f"  data wait (framework): {100 * r['framework']['data_share']:.2f}% of step time",
        f"  training step: {r['gflop_per_image']:.3f} GFLOP/image -> "
        f"{r['achieved_tflops'] * 1e3:.1f} GFLOP/s achieved; matmul peak "
        f"{r['matmul_peak_tflops'] * 1e3:.1f} GFLOP/s ({r['peak_dtype']}) -> "
        f"{100 * r['share_of_peak']:.1f}% of peak",
        "  (FLOPs are nominal, direct-convolution counts; Winograd-style 3x3 kernels do fewer)",
    ]
    return "\n".join(lines)
