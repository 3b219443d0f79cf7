"""Rank 0's MLflow logging into a run that the driver created (it never creates or ends runs).

Everything goes through `MlflowClient.log_batch` (one call per evaluation:
100 single `log_metric` calls cost seconds, a batch tens of milliseconds).
Parameter values are truncated to MLflow's length limit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter value
MAX_BATCH = 1000  # metrics per log_batch call


class RunLogger:
    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def params(self, flat: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)[:MAX_PARAM_VALUE]) for key, value in sorted(flat.items())]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        self.curve(tuple(metrics), [(step, list(metrics.values()))])

    def curve(self, names: tuple[str, ...], points: list[tuple[int, list[float]]]) -> None:
        """Several metrics at many steps, e.g. the training losses' curve, in as few calls as possible."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(name, float(value), now, step) for step, values in points for name, value in zip(names, values)]
        for start in range(0, len(rows), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=rows[start : start + MAX_BATCH])

    def tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_PARAM_VALUE]) for k, v in tags.items()])

    def artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
