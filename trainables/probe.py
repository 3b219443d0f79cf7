"""Attribute probes: read the watch attributes back from image tokens of one generation space.

A probe is a set of linear classifiers (standardised flattened tokens ->
class, ridge regression on one-hot targets) trained on the *true* tokens of test images: weather and corners as
classes, hour/minute/second as 12 classes each (minutes and seconds in 5-unit
bins), battery in 11 bins of 10. Its predictions are canonical answer strings,
so `trainables.scoring` scores them on the VQA scale. It is fitted on 80% of the
images and its accuracy on the other 20% is reported as `probe/true/...`, so a
generation score can be read against what the probe can read at all.

Fitted probes are cached on disk, keyed by the exact true tokens and labels, as
plain arrays (.npz read without pickle: a cache folder may be shared, and
opening a file must not run code). A cache file that does not load is refitted.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from trainables.data.records import CORNERS, WEATHERS, WatchFace

HELD_OUT = 0.2
VERSION = 2  # in the cache key: a changed probe is refitted


TARGETS = {"hour": 12, "minute": 12, "second": 12, "battery": 11, "weather": len(WEATHERS),
           "weather_corner": len(CORNERS), "battery_corner": len(CORNERS)}


def labels(face: WatchFace) -> dict[str, int]:
    return {
        "hour": face.hour % 12, "minute": face.minute // 5, "second": face.second // 5,
        "battery": min(face.battery // 10, 10), "weather": WEATHERS.index(face.weather),
        "weather_corner": CORNERS.index(face.weather_corner), "battery_corner": CORNERS.index(face.battery_corner),
    }


def answers(classes: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
    """Predicted classes per target -> canonical answer strings per attribute (bins read as their middle)."""
    n = len(classes["hour"])
    return {
        "time": [f"{classes['hour'][i]:02d}:{5 * classes['minute'][i] + 2:02d}:{5 * classes['second'][i] + 2:02d}" for i in range(n)],
        "weather": [WEATHERS[c] for c in classes["weather"]],
        "battery": [f"{min(10 * c + 5, 100)}%" for c in classes["battery"]],
        "weather_corner": [CORNERS[c] for c in classes["weather_corner"]],
        "battery_corner": [CORNERS[c] for c in classes["battery_corner"]],
    }


class AttributeProbe:
    """Ridge-regression classifiers on standardised flattened tokens, one per target.

    Closed form in the dual (N images << N*T*D features), with the ridge strength of
    each target chosen by exact leave-one-out accuracy: fitting takes milliseconds.
    """

    RIDGE = (1e-1, 1e0, 1e1, 1e2, 1e3, 1e4)

    def __init__(self, mean: np.ndarray, std: np.ndarray, weights: dict[str, np.ndarray]):
        self.mean, self.std, self.weights = mean, std, weights

    @classmethod
    def fit(cls, tokens: np.ndarray, faces: Sequence[WatchFace]) -> AttributeProbe:
        x = tokens.reshape(len(tokens), -1).astype(np.float64)
        mean, std = x.mean(0), x.std(0) + 1e-6
        x = (x - mean) / std  # (N, F)
        s, u = np.linalg.eigh(x @ x.T)  # kernel (N, N) = U diag(s) U^T
        s = np.clip(s, 0.0, None)
        weights = {}
        for target, n_classes in TARGETS.items():
            y_idx = np.array([labels(f)[target] for f in faces])
            y = np.eye(n_classes)[y_idx]  # (N, C) one-hot
            uty = u.T @ y
            best = None
            for ridge in cls.RIDGE:
                hat = (u * (s / (s + ridge))) @ uty  # fitted values
                leverage = ((u * u) * (s / (s + ridge))).sum(1)  # diag of the hat matrix
                loo = y - (y - hat) / np.clip(1.0 - leverage, 1e-9, None)[:, None]
                accuracy = (loo.argmax(1) == y_idx).mean()
                if best is None or accuracy > best[0]:
                    best = (accuracy, ridge)
            alpha = (u / (s + best[1])) @ uty  # (N, C) dual coefficients
            weights[target] = x.T @ alpha  # (F, C)
        return cls(mean, std, weights)

    def save(self, path: Path) -> None:
        """Write atomically: concurrent trials may fit the same probe."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as file:
            np.savez(file, mean=self.mean, std=self.std, **{f"weights_{t}": w for t, w in self.weights.items()})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, features: int) -> AttributeProbe | None:
        """The cached probe for `features` flattened token values, or None when the file is unusable."""
        try:
            with np.load(path, allow_pickle=False) as arrays:
                mean, std = arrays["mean"], arrays["std"]
                weights = {target: arrays[f"weights_{target}"] for target in TARGETS}
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
            return None
        shapes_fit = mean.shape == std.shape == (features,) and all(
            weights[target].shape == (features, n_classes) for target, n_classes in TARGETS.items())
        return cls(mean, std, weights) if shapes_fit else None

    def __call__(self, tokens) -> dict[str, list[str]]:
        """The scorers' ProbeFn: tokens (N, T, D) -> {attribute: N answer strings}."""
        x = (np.asarray(tokens, dtype=np.float64).reshape(len(tokens), -1) - self.mean) / self.std
        return answers({t: (x @ w).argmax(1) for t, w in self.weights.items()})


def fit_probe(tokens: np.ndarray, faces: Sequence[WatchFace], cache_dir: Path | None) -> tuple[AttributeProbe, slice]:
    """A probe fitted on the first 80% of (tokens, faces); -> (probe, held-out slice). Cached by content."""
    cut = max(1, int(round(len(tokens) * (1 - HELD_OUT))))
    content = np.ascontiguousarray(tokens, dtype=np.float32).tobytes() + repr([VERSION, list(faces)]).encode()
    key = hashlib.sha256(content).hexdigest()[:20]
    path = cache_dir / f"probe-{key}.npz" if cache_dir else None
    cached = AttributeProbe.load(path, tokens[0].size) if path is not None and path.is_file() else None
    if cached is not None:
        return cached, slice(cut, None)
    probe = AttributeProbe.fit(tokens[:cut], faces[:cut])
    if path is not None:
        probe.save(path)
    return probe, slice(cut, None)
