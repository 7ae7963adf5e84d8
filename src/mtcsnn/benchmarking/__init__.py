"""The engine of ``python -m mtcsnn.bench``: the framework's training step against a bare PyTorch
loop (:mod:`~mtcsnn.benchmarking.loops`), and whole runs as a sweep against bare runs
(:mod:`~mtcsnn.benchmarking.sweep`).
"""
