"""Fixtures shared by the trainable's test modules."""

from __future__ import annotations

import pytest

from trainables.config import load_config
from trainables.data.prepare import ensure_dataset

TINY_DATA = {"data.generate_train_images": 48, "data.generate_test_images": 12}
"""The tiny smart-watch dataset every trainable test trains on."""


@pytest.fixture(scope="session")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "smartwatch"
    ensure_dataset(load_config(None, {**TINY_DATA, "data.path": str(path)}).data)
    return path
