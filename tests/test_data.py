import numpy as np
import pytest
import torch

from mtcsnn.data import RetinaMNISTDataModule, SyntheticDataModule
from mtcsnn.data.augment import augment
from mtcsnn.errors import DataError


def write_medmnist_npz(folder, size, counts=(10, 4, 6), seed=0):
    """A file in the medmnist format (keys, dtypes and shapes) for sizes not available here."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 5).reshape(n, 1).astype(np.uint8)
    np.savez(folder / f"retinamnist_{size}.npz", **arrays)
    return arrays


def test_synthetic_batches_are_pairs_of_uint8_images():
    dm = SyntheticDataModule(num_train=30, num_val=10, num_test=12, batch_size=8)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert [len(b["grade_a"]) for b in batches] == [4, 4, 4, 3]  # 15 pairs, 4 a batch
    batch = batches[0]
    assert batch["image_a"].shape == (4, 3, 28, 28) and batch["image_a"].dtype == torch.uint8
    assert torch.equal(batch["diff"], batch["grade_a"] - batch["grade_b"])
    seen = torch.cat([torch.cat([b["index_a"], b["index_b"]]) for b in batches])
    assert sorted(seen.tolist()) == list(range(30))


def test_val_and_test_see_every_image_exactly_once():
    dm = SyntheticDataModule(num_train=20, num_val=13, num_test=300, eval_batch_size=128)
    dm.setup()
    for loader, n in ((dm.val_dataloader(), 13), (dm.test_dataloader(), 300)):
        indices = torch.cat([b["index"] for b in loader])
        assert indices.tolist() == list(range(n))


def test_synthetic_grades_are_ordinal_in_the_images():
    images, grades = SyntheticDataModule(num_train=200).load_split("train")
    brightness = images.float().mean(dim=(1, 2, 3))
    means = [brightness[grades == g].mean().item() for g in range(5)]
    assert means == sorted(means)
    assert set(grades.tolist()) == set(range(5))


def test_batches_become_floats_and_augmentation_only_in_training():
    dm = SyntheticDataModule(num_train=20, batch_size=8, augment="dihedral")
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    raw = batch["image"].clone()
    out = dm.on_after_batch_transfer(batch, 0)  # no trainer: evaluation path
    assert out["image"].dtype == torch.float32
    assert torch.allclose(out["image"] * 255, raw.float())


def test_dihedral_augmentation_only_moves_pixels():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    out = augment(images, "dihedral")
    assert not torch.equal(out, images)
    for before, after in zip(images, out, strict=True):  # each image keeps its own pixels
        assert torch.equal(before.flatten().sort().values, after.flatten().sort().values)


@pytest.mark.parametrize("size", [64, 128])
def test_larger_medmnist_sizes_load(tmp_path, size):
    arrays = write_medmnist_npz(tmp_path, size)
    dm = RetinaMNISTDataModule(
        root=str(tmp_path), size=size, download=False, verify_md5=False, batch_size=4
    )
    dm.setup()
    images, grades = dm.splits["val"]
    assert images.shape == (4, 3, size, size)
    assert torch.equal(images.permute(0, 2, 3, 1), torch.from_numpy(arrays["val_images"]))
    assert grades.tolist() == arrays["val_labels"].reshape(-1).tolist()


def test_missing_file_offline_names_folder_file_and_env(tmp_path):
    dm = RetinaMNISTDataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError) as info:
        dm.setup()
    message = str(info.value)
    assert "retinamnist.npz" in message and "nowhere" in message and "MTCSNN_DATA_DIR" in message


def test_real_retinamnist_splits(real_data_dir):
    dm = RetinaMNISTDataModule(root=str(real_data_dir), download=False)
    dm.setup()
    sizes = {split: len(dm.splits[split][0]) for split in ("train", "val", "test")}
    assert sizes == {"train": 1080, "val": 120, "test": 400}
    assert dm.splits["train"][0].shape[1:] == (3, 28, 28)
    counts = torch.bincount(dm.splits["train"][1], minlength=5).tolist()
    assert counts == [486, 128, 206, 194, 66]


def test_strong_augmentation_gives_each_image_its_own_transform():
    from mtcsnn.data.augment import colour_jitter, random_affine

    torch.manual_seed(0)
    one = torch.rand(1, 3, 28, 28)
    batch = one.repeat(16, 1, 1, 1)
    moved = random_affine(batch)
    assert moved.shape == batch.shape
    assert len({round(float(m.sum()), 3) for m in moved}) == 16  # 16 different transforms
    # no rotation, scale 1, no shift: the image itself
    same = random_affine(batch, degrees=0.0, scale=(1.0, 1.0), shift=0.0)
    assert torch.allclose(same, batch, atol=1e-5)
    jittered = colour_jitter(batch)
    assert 0 <= float(jittered.min()) and float(jittered.max()) <= 1
    assert len({round(float(j.mean()), 4) for j in jittered}) > 1
    torch.manual_seed(1)
    first = augment(batch, "strong")
    torch.manual_seed(1)
    assert torch.equal(first, augment(batch, "strong"))  # the seed decides everything


def test_random_erasing_blanks_one_rectangle_in_about_half_the_images():
    from mtcsnn.data.augment import random_erasing

    torch.manual_seed(0)
    batch = torch.rand(256, 3, 28, 28) * 0.9 + 0.1  # no zeros before erasing
    erased = random_erasing(batch)
    zero = (erased == 0).all(1)  # N x H x W: pixels blanked in every channel
    hit = zero.flatten(1).any(1)
    assert 0.35 < float(hit.float().mean()) < 0.65  # p 0.5, each image its own coin
    for mask in zero[hit]:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(mask.sum()) == int(box)  # one solid rectangle
        assert int(box) <= 0.34 * 28 * 28 + 28  # at most a third of the image (+ rounding)
    untouched = ~hit
    assert torch.equal(erased[untouched], batch[untouched])
    torch.manual_seed(1)
    first = augment(batch[:16], "strong_erase")
    torch.manual_seed(1)
    assert torch.equal(first, augment(batch[:16], "strong_erase"))


def test_dropout_and_label_smoothing_are_config_values():
    import torch.nn.functional as F

    from mtcsnn.losses import MultiTaskLoss, PairCrossEntropyLoss
    from mtcsnn.models import BranchOutput, SiameseResNet

    plain, dropped = SiameseResNet(), SiameseResNet(dropout=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # checkpoints unchanged
    x = torch.rand(4, 3, 28, 28)
    dropped.train()
    assert not torch.equal(dropped(x).logits, dropped(x).logits)
    dropped.eval()
    assert torch.equal(dropped(x).logits, dropped(x).logits)
    logits, grades = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    out = BranchOutput(logits, torch.zeros(6))
    smoothed = PairCrossEntropyLoss(label_smoothing=0.1)(out, out, grades, grades)
    expected = 2 * F.cross_entropy(logits, grades, label_smoothing=0.1)
    assert torch.allclose(smoothed["loss"], expected)
    multitask = MultiTaskLoss(lam=0.0, label_smoothing=0.1)(out, out, grades, grades)
    assert torch.allclose(multitask["loss"], expected)


@pytest.mark.parametrize(("num_workers", "resident"), [(0, True), (1, False)])
def test_splits_sit_on_the_training_device_and_batches_are_gathered_there(num_workers, resident):
    """A stand-in device (meta) for a GPU: no images cross from the host per step."""
    from types import SimpleNamespace

    dm = SyntheticDataModule(num_train=40, num_val=20, num_test=20, batch_size=16)
    dm.num_workers = num_workers  # the choice only; no worker process starts here
    dm.setup()
    device = torch.device("meta")
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=device), global_rank=0, world_size=1
    )
    images, grades = dm.split_on_device("train")
    assert (images.device == device) == resident and (grades.device == device) == resident
    assert dm.splits["train"][0].device.type == "cpu"  # the host copy stays for the rest
    if resident:
        assert dm.split_on_device("train")[0] is images  # uploaded once
        dataset = dm.train_dataloader().dataset
        batch = dataset[torch.tensor([[0, 1], [2, 3]])]
        assert batch["image_a"].device == device and batch["grade_b"].device == device
        eval_batches = dm._eval_loader("val").sampler
        assert sum(len(b) for b in eval_batches) == 20 and eval_batches[0].device == device
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cpu")), global_rank=0, world_size=1
    )
    assert dm.split_on_device("train")[0] is dm.splits["train"][0]  # the CPU path: as it was
