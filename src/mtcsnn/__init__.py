"""MTCSNN: Multi-task Clinical Siamese Neural Network for diabetic retinopathy grading."""

import os

# Before PyTorch loads its OpenMP runtime: threads that wait sleep instead of spinning. Spinning
# gains ~7% on an idle machine and loses 1.5-3x when another process holds a core (README,
# "Threads"). A value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mtcsnn.run.config import register_resolvers  # noqa: E402

__version__ = "0.1.0"

register_resolvers()
