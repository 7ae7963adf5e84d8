"""The engine of ``python -m mtcsnn.report``: runs read back from their folders
(:mod:`~mtcsnn.reporting.runs`, :mod:`~mtcsnn.reporting.predictions`), grouped into
configurations (:mod:`~mtcsnn.reporting.grouping`) and compared
(:mod:`~mtcsnn.reporting.comparing`); the page (:mod:`~mtcsnn.reporting.page`) and the figures
(:mod:`~mtcsnn.reporting.figures`) that show them.
"""
