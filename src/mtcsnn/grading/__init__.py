"""How grades are scored: the metrics of every run, and grades decoded from the severity score."""
