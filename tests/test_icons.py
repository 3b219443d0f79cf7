"""The icon reader: where the renderer puts the weather icon, and how generated codes are scored per corner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.data.records import CORNERS, WEATHERS, WatchFace
from trainables.data.render import render_watch
from trainables.icons import IconReader, icon_cell, score_icons


def face(weather: str, corner: str) -> WatchFace:
    battery_corner = next(c for c in CORNERS if c != corner)
    return WatchFace(hour=3, minute=7, second=45, battery=42, weather=weather, weather_corner=corner,
                     battery_corner=battery_corner)


@pytest.mark.parametrize("grid, cells", [(4, [0, 3, 12, 15]), (8, [0, 7, 56, 63]), (2, [0, 1, 2, 3])])
def test_icon_cell_is_the_corner_cell_of_the_grid(grid, cells):
    assert [icon_cell(corner, grid) for corner in CORNERS] == cells


@pytest.mark.parametrize("corner", CORNERS)
def test_icon_cell_holds_what_the_weather_changes_in_a_rendered_watch(corner):
    """Two watches that differ only in their weather differ most in the reader's cell (4 x 4 grid at 32 px)."""
    sunny, raining = (np.asarray(render_watch(face(w, corner), (200, 60, 60), 32), dtype=float) for w in ("sunny", "raining"))
    change = np.abs(sunny - raining).sum(-1)  # (32, 32)
    per_cell = change.reshape(4, 8, 4, 8).sum((1, 3)).reshape(-1)  # row-major 4 x 4 cells
    assert int(per_cell.argmax()) == icon_cell(corner, 4)


def true_codes(faces: list[WatchFace], grid: int = 2) -> torch.Tensor:
    """Codes whose icon cell encodes the weather (codes 10-12) over a background code 0."""
    codes = torch.zeros(len(faces), grid * grid, dtype=torch.long)
    for row, f in enumerate(faces):
        codes[row, icon_cell(f.weather_corner, grid)] = 10 + WEATHERS.index(f.weather)
    return codes


def test_reader_scores_each_requested_corner():
    faces = [face(w, c) for c in CORNERS for w in WEATHERS]
    reader = IconReader.fit(true_codes(faces), faces)
    both = [("weather", "weather_corner")] * len(faces)
    truth = score_icons(reader, true_codes(faces), faces, both)
    assert truth == {**{c: 1.0 for c in CORNERS}, "overall": 1.0}

    drawn = true_codes(faces)
    drawn[:3, icon_cell("top-left", 2)] = 0  # top-left: no icon at all (a background code)
    drawn[3, icon_cell("top-right", 2)] = 11  # top-right, sunny asked: a cloudy icon
    scores = score_icons(reader, drawn, faces, both)
    assert scores["top-left"] == 0.0 and scores["top-right"] == pytest.approx(2 / 3)
    assert scores["bottom-left"] == scores["bottom-right"] == 1.0
    assert scores["overall"] == pytest.approx(8 / 12)


def test_only_prompts_naming_weather_and_its_corner_count():
    faces = [face("sunny", "top-left"), face("cloudy", "bottom-right")]
    reader = IconReader.fit(true_codes(faces), faces)
    wrong = torch.zeros(2, 4, dtype=torch.long)  # nothing drawn anywhere
    assert score_icons(reader, wrong, faces, [("weather",), ("weather_corner",)]) == {}
    assert score_icons(reader, wrong, faces, [("weather", "weather_corner"), ("time",)]) == {"top-left": 0.0, "overall": 0.0}


def test_codes_that_are_not_a_square_grid_have_no_reader():
    assert IconReader.fit(torch.zeros(1, 6, dtype=torch.long), [face("sunny", "top-left")]) is None
