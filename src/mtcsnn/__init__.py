"""MTCSNN: Multi-task Clinical Siamese Neural Network for diabetic retinopathy grading.

Imports nothing of Hydra or OmegaConf: the domain (``mtcsnn.losses``, ``mtcsnn.models``, ...)
is usable without them. The config resolvers are registered where configs are composed
(``mtcsnn.run.config``).
"""

import os

# Before PyTorch loads its OpenMP runtime: threads that wait sleep instead of spinning. Spinning
# gains ~7% on an idle machine and loses 1.5-3x when another process holds a core (docs:
# Getting started, "Threads"). A value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
