"""Which weather a generated smart-watch image draws in the requested corner (discrete generation spaces).

The probe reads attributes from a whole generated image, so a model that draws the right icon in one
corner and a wrong one elsewhere scores somewhere in between. This reader looks where the renderer
puts the icon instead: the grid cell of the generation space that holds the icon's centre in the
requested corner (trainables.data.render.weather_icon_centre). A code seen in that cell of the true
test images shows one weather, the most frequent one over those images; a code never seen there is
no icon at all.

Scored per corner, `test/gen/icon/<corner>` and `.../overall` (their mean over prompts), on the
generation prompts that name both the weather and its corner: the share whose generated cell shows
the requested weather. Like the probe, the reader depends on the codebook and the test images only,
never on the model. Its constant baseline (every generation each cell's most frequent code) is often
about a third, not zero: dial edges scatter a corner cell over many colour codes, so the most frequent
code there can be one fixed icon, right whenever that weather is asked for.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from trainables.data.records import CORNERS, WatchFace
from trainables.data.render import weather_icon_centre


@dataclass(frozen=True)
class IconReader:
    grid: int  # cells per side of the generation grid (row-major tokens)
    weather_of_code: dict[int, str]  # a code seen in an icon cell -> the weather it shows there

    @classmethod
    def fit(cls, codes: torch.Tensor, faces: Sequence[WatchFace]) -> IconReader | None:
        """codes (N, Ng): the true test images' codes, row-major over a square grid; faces: their truth.
        None when the codes do not form a square grid: there is no icon cell to read."""
        grid = int(round(codes.shape[1] ** 0.5))
        if grid * grid != codes.shape[1]:
            return None
        seen: dict[int, Counter] = defaultdict(Counter)
        for row, face in zip(codes.tolist(), faces):
            seen[row[icon_cell(face.weather_corner, grid)]][face.weather] += 1
        return cls(grid, {code: counts.most_common(1)[0][0] for code, counts in seen.items()})

    def weather(self, codes: Sequence[int], corner: str) -> str | None:
        """The weather drawn in `corner` of one image's codes (Ng,); None where no icon is drawn."""
        return self.weather_of_code.get(int(codes[icon_cell(corner, self.grid)]))


def icon_cell(corner: str, grid: int) -> int:
    """Row-major index of the grid cell holding the weather icon's centre in `corner`."""
    x, y = weather_icon_centre(corner)
    return min(int(y * grid), grid - 1) * grid + min(int(x * grid), grid - 1)


def score_icons(reader: IconReader, codes: torch.Tensor, faces: Iterable[WatchFace],
                mentioned: Iterable[Sequence[str]]) -> dict[str, float]:
    """Generated codes (N, Ng) of prompts with their faces and mentioned attributes -> {corner: share, 'overall'}.
    Only prompts naming both the weather and its corner count; a corner no such prompt asks for is left out."""
    right: dict[str, list[bool]] = {corner: [] for corner in CORNERS}
    for row, face, named in zip(codes.tolist(), faces, mentioned):
        if "weather" in named and "weather_corner" in named:
            right[face.weather_corner].append(reader.weather(row, face.weather_corner) == face.weather)
    scored = {corner: hits for corner, hits in right.items() if hits}
    if not scored:
        return {}
    return {**{corner: float(np.mean(hits)) for corner, hits in scored.items()},
            "overall": float(np.mean([hit for hits in scored.values() for hit in hits]))}
