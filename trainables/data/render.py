"""Draw one smart-watch image from its `WatchFace`, with PIL shapes only (no image files).

Geometry, in fractions of the image side S: a round face centred, radius 0.4,
filled with the face colour; white hour/minute/second hands of lengths
0.5/0.7/0.9 of the radius and decreasing widths. The corners outside the
circle hold the weather icon and the battery indicator: a wide outlined bar
along the image edge, filled in proportion, with the "NN%" text beside the
circle. The bar is wide and thick so that a tiny model can read the level at
64 px, where the text is too small to read.

Drawing happens at twice the side and is then box-downsampled, which smooths
edges cheaply; the result is a deterministic function of (face, colour, size).
"""

from __future__ import annotations

import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from trainables.data.records import WatchFace

SUPERSAMPLE = 2
WHITE = (255, 255, 255)
INK = (40, 40, 40)
BATTERY_FILL = (40, 170, 60)
SUN = (250, 190, 20)
CLOUD = (150, 155, 165)
RAIN_CLOUD = (95, 100, 115)
RAIN = (30, 110, 230)

# (length as a fraction of the radius, width as a fraction of the radius), hour/minute/second.
HANDS = ((0.5, 0.09), (0.7, 0.06), (0.9, 0.03))


def render_watch(face: WatchFace, colour: tuple[int, int, int], size: int) -> Image.Image:
    """The RGB image (size x size) of `face` with the dial filled in `colour`."""
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), WHITE)
    draw = ImageDraw.Draw(image)
    _draw_dial(draw, face, colour, side)
    _draw_weather(image, face.weather, face.weather_corner, side)
    _draw_battery(draw, face.battery, face.battery_corner, side)
    return image.reduce(SUPERSAMPLE)


def _draw_dial(draw: ImageDraw.ImageDraw, face: WatchFace, colour: tuple[int, int, int], side: int) -> None:
    centre, radius = side / 2, 0.4 * side
    draw.ellipse((centre - radius, centre - radius, centre + radius, centre + radius), fill=colour)
    # Real clocks: the hour hand advances with the minutes, the minute hand with the seconds.
    turns = (
        (face.hour % 12 + face.minute / 60) / 12,
        (face.minute + face.second / 60) / 60,
        face.second / 60,
    )
    for turn, (length, width) in zip(turns, HANDS):
        angle = 2 * math.pi * turn
        tip = (centre + length * radius * math.sin(angle), centre - length * radius * math.cos(angle))
        draw.line(((centre, centre), tip), fill=WHITE, width=max(2, round(width * radius)))
    hub = max(2, 0.06 * radius)
    draw.ellipse((centre - hub, centre - hub, centre + hub, centre + hub), fill=WHITE)


def _corner_origin(corner: str, width: float, height: float, margin: float) -> tuple[float, float]:
    """Top-left (x, y) of a width x height box tucked into `corner`, `margin` from the edges (fractions of the side)."""
    top, left = corner.split("-")[0] == "top", corner.split("-")[1] == "left"
    return (margin if left else 1 - margin - width, margin if top else 1 - margin - height)


def _corner_box(corner: str, side: int, width: float, height: float, margin: float = 0.02) -> tuple[int, int, int, int]:
    """A width x height box (fractions of the side) tucked into `corner`, `margin` from the edges, in pixels."""
    x0, y0 = _corner_origin(corner, width, height, margin)
    return (round(x0 * side), round(y0 * side), round((x0 + width) * side), round((y0 + height) * side))


WEATHER_ICON_SIZE, WEATHER_ICON_MARGIN = 0.2, 0.01
"""The weather icon's side and its distance from the image edges, as fractions of the image side."""


def weather_icon_centre(corner: str) -> tuple[float, float]:
    """(x, y) of the weather icon's centre in `corner`, as fractions of the image side."""
    x0, y0 = _corner_origin(corner, WEATHER_ICON_SIZE, WEATHER_ICON_SIZE, WEATHER_ICON_MARGIN)
    return (x0 + WEATHER_ICON_SIZE / 2, y0 + WEATHER_ICON_SIZE / 2)


def _draw_weather(image: Image.Image, weather: str, corner: str, side: int) -> None:
    box = _corner_box(corner, side, WEATHER_ICON_SIZE, WEATHER_ICON_SIZE, margin=WEATHER_ICON_MARGIN)
    icon = _weather_icon(weather, box[2] - box[0])
    image.paste(icon, box[:2], icon)


@lru_cache(maxsize=64)
def _weather_icon(weather: str, side: int) -> Image.Image:
    """RGBA icon: sunny = disc with rays, cloudy = grey cloud, raining = dark cloud with blue drops."""
    icon = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    s = side
    if weather == "sunny":
        c, r = s / 2, 0.24 * s
        for k in range(8):
            a = k * math.pi / 4
            draw.line(((c + 0.3 * s * math.cos(a), c + 0.3 * s * math.sin(a)),
                       (c + 0.47 * s * math.cos(a), c + 0.47 * s * math.sin(a))), fill=SUN, width=max(2, round(0.07 * s)))
        draw.ellipse((c - r, c - r, c + r, c + r), fill=SUN)
    else:
        colour = CLOUD if weather == "cloudy" else RAIN_CLOUD
        top = 0.25 if weather == "cloudy" else 0.08
        for x0, y0, x1, y1 in ((0.05, 0.35, 0.5, 0.75), (0.25, 0.15, 0.75, 0.65), (0.5, 0.35, 0.95, 0.75)):
            draw.ellipse((x0 * s, (y0 + top - 0.2) * s, x1 * s, (y1 + top - 0.2) * s), fill=colour)
        draw.rectangle((0.25 * s, (0.45 + top) * s, 0.75 * s, (0.55 + top) * s), fill=colour)
        if weather == "raining":
            for x in (0.25, 0.5, 0.75):
                draw.line(((x * s, 0.68 * s), ((x - 0.08) * s, 0.95 * s)), fill=RAIN, width=max(2, round(0.08 * s)))
    return icon


BATTERY_BAR_SIZE, BATTERY_BAR_MARGIN = (0.34, 0.08), 0.02
"""The battery bar's width and height and its distance from the image edges, as fractions of the image side."""


def _draw_battery(draw: ImageDraw.ImageDraw, battery: int, corner: str, side: int) -> None:
    # The bar runs along the image edge, which the circle never reaches (it stops 0.1 S from it).
    x0, y0, x1, y1 = _corner_box(corner, side, *BATTERY_BAR_SIZE, margin=BATTERY_BAR_MARGIN)
    line = max(1, round(0.008 * side))
    draw.rectangle((x0, y0, x1, y1), outline=INK, width=line)
    fill = round((x1 - x0 - 2 * line) * battery / 100)
    if fill:  # left to right, like a phone's battery
        draw.rectangle((x0 + line, y0 + line, x0 + line + fill - 1, y1 - line), fill=BATTERY_FILL)
    text = f"{battery}%"
    font = _font(max(6, round(0.075 * side)))
    top, left = corner.startswith("top"), corner.endswith("left")
    ty = y1 + 0.01 * side if top else y0 - 0.01 * side
    draw.text((x0 if left else x1, ty), text, fill=INK, font=font, anchor=("l" if left else "r") + ("a" if top else "d"))


@lru_cache(maxsize=16)
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=pixels)
