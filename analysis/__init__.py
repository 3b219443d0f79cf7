"""From MLflow runs to findings: polars frames, paired effects with intervals, figures and a report."""
