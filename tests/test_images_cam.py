"""Preprocessing of new images and Grad-CAM maps, without a trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mtcsnn.inference.gradcam import cam_layer, grad_cam
from mtcsnn.inference.images import expand_inputs, prepare_image
from mtcsnn.models import SiameseResNet


def test_a_wide_photo_is_padded_to_a_square_never_cut():
    # a 300x200 picture, bright to its edges: red centre, blue side bands; nothing is cut away
    array = np.zeros((200, 300, 3), dtype=np.uint8)
    array[:, :, 2] = 255
    array[:, 50:250] = (255, 0, 0)
    out = np.asarray(prepare_image(Image.fromarray(array), 30))
    assert out.shape == (30, 30, 3)
    assert out[15, 0, 2] > 200 and out[15, -1, 2] > 200  # both blue bands kept
    assert out[15, 15, 0] > 200  # the red centre
    assert out[:3].max() < 10 and out[-3:].max() < 10  # black above and below


def test_grey_image_becomes_rgb_and_right_size_images_are_untouched():
    grey = Image.fromarray(np.full((64, 64), 7, dtype=np.uint8))
    assert np.asarray(prepare_image(grey, 28)).shape == (28, 28, 3)
    rgb = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    assert (np.asarray(prepare_image(Image.fromarray(rgb), 28)) == rgb).all()


def test_inputs_expand_folders_and_report_what_gives_nothing(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "bad.npz", labels=np.zeros(3))
    sources, failures = expand_inputs(
        [
            str(tmp_path / "a"),
            str(tmp_path / "empty"),
            str(tmp_path / "nope.jpg"),
            str(tmp_path / "bad.npz"),
        ]
    )
    assert [s.path.name for s in sources] == ["x.png"]
    reasons = dict(failures)
    assert "no image files" in reasons[str(tmp_path / "empty")]
    assert "no such file" in reasons[str(tmp_path / "nope.jpg")]
    assert "_images" in reasons[str(tmp_path / "bad.npz")]


@pytest.mark.parametrize(
    ("stem", "size", "layer"),
    [("imagenet", 28, "layer2"), ("imagenet", 64, "layer3"), ("cifar", 28, "layer4")],
)
def test_grad_cam_map_has_the_input_size(stem, size, layer):
    torch.manual_seed(0)
    net = SiameseResNet("resnet18", stem).eval()
    chosen = cam_layer(net, size)
    assert chosen is getattr(net.backbone, layer)
    images = torch.rand(3, 3, size, size)
    maps = grad_cam(lambda x: net(x).logits, images, torch.tensor([0, 2, 4]), chosen)
    assert maps.shape == (3, size, size)
    assert maps.min() >= 0 and maps.max() <= 1


def test_unknown_cam_layer_is_refused():
    with pytest.raises(ValueError, match="layer9"):
        cam_layer(SiameseResNet(), 28, "layer9")
