from mtcsnn.data.datamodule import PairDataModule
from mtcsnn.data.pairing import PairSampler, random_matching
from mtcsnn.data.retinamnist import IMAGE_SIZES, RetinaMNISTDataModule
from mtcsnn.data.synthetic import SyntheticDataModule, make_synthetic

__all__ = [
    "IMAGE_SIZES",
    "PairDataModule",
    "PairSampler",
    "RetinaMNISTDataModule",
    "SyntheticDataModule",
    "make_synthetic",
    "random_matching",
]
