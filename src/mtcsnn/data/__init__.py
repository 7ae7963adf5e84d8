"""Datasets as in-memory uint8 tensors, pairing of training images, and augmentation.

A new dataset is a :class:`PairDataModule` subclass with ``load_split`` (and ``check_size``
when it has only some sizes) plus a yaml in
``conf/data``; a new pairing strategy is a function in ``pairing.py`` and a name in
``PAIRINGS``.
"""

from mtcsnn.data.datamodule import PairDataModule
from mtcsnn.data.fundus_folder import FundusFolderDataModule
from mtcsnn.data.pairing import PairSampler, random_matching
from mtcsnn.data.pairing_feedback import PairingFeedback
from mtcsnn.data.retinamnist import IMAGE_SIZES, RetinaMNISTDataModule
from mtcsnn.data.synthetic import SyntheticDataModule, make_synthetic

__all__ = [
    "FundusFolderDataModule",
    "IMAGE_SIZES",
    "PairDataModule",
    "PairSampler",
    "PairingFeedback",
    "RetinaMNISTDataModule",
    "SyntheticDataModule",
    "make_synthetic",
    "random_matching",
]
