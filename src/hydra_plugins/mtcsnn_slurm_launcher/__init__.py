"""The launcher of ``hydra/launcher=slurm``: :class:`mtcsnn.run.slurm.SlurmLauncher`, named
here because Hydra takes launchers only from its ``hydra_plugins`` package. Without the cluster
extra (hydra-submitit-launcher) there is nothing to name, and Hydra's plugin scan stays quiet."""

from importlib.util import find_spec

if find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from mtcsnn.run import slurm

    class SlurmLauncher(slurm.SlurmLauncher):
        """See :mod:`mtcsnn.run.slurm`."""
