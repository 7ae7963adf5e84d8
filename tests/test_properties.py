"""Property-based tests (hypothesis): config values and images of any shape and mode."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from mtcsnn.errors import ConfigError
from mtcsnn.inference.images import prepare_image, to_tensor
from mtcsnn.run.checks import check_config

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
CHECKED = {
    "loss.lam": lambda v: (
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    ),
    "data.batch_size": lambda v: (
        isinstance(v, int) and not isinstance(v, bool) and v >= 2 and v % 2 == 0
    ),
    "trainer.max_epochs": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "threads": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "model.net.backbone": lambda v: v in ("resnet18", "resnet34", "resnet50"),
    "data.pairing": lambda v: v in ("random", "balanced", "hard"),
    "data.size": lambda v: v in (28, 64, 128, 224) and not isinstance(v, bool),
}


@pytest.fixture(scope="module")
def base_cfg():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mtcsnn.run.config import CONFIG_PATH

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("train", overrides=["data=retinamnist"])  # sizes: MedMNIST+'s only
    GlobalHydra.instance().clear()
    return cfg


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(sorted(CHECKED)), value=ANY_VALUE)
def test_any_value_is_accepted_exactly_when_valid_or_refused_naming_its_key(base_cfg, key, value):
    cfg = OmegaConf.create(OmegaConf.to_container(base_cfg))
    OmegaConf.update(cfg, key, value, force_add=True)
    valid = CHECKED[key](value)
    if valid:
        check_config(cfg)  # must not raise
    else:
        with pytest.raises(ConfigError) as err:
            check_config(cfg)
        assert err.value.key == key


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    mode=st.sampled_from(["RGB", "RGBA", "L", "P", "1", "I;16", "CMYK"]),
    fmt=st.sampled_from(["PNG", "JPEG", "TIFF", "BMP"]),
    size=st.sampled_from([28, 64]),
)
def test_any_readable_image_becomes_a_square_rgb_tensor(width, height, mode, fmt, size):
    rng = np.random.default_rng(width * 1000 + height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot hold this mode: nothing to read
    buffer.seek(0)
    with Image.open(buffer) as reread:
        tensor = to_tensor(prepare_image(reread, size))
    assert tuple(tensor.shape) == (3, size, size)
    assert str(tensor.dtype) == "torch.uint8"
