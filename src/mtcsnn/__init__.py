"""MTCSNN: Multi-task Clinical Siamese Neural Network for diabetic retinopathy grading."""

from mtcsnn.config import register_resolvers

__version__ = "0.1.0"

register_resolvers()
