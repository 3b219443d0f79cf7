"""The typed records every dataset yields: what an image shows and what is asked or said about it.

A smart-watch image has one `WatchFace` (its ground truth). Each image gives
records of three `Task`s: a VQA conversation, a caption and a text-to-image
generation request. Every question turn names the attribute it asks, so
scorers never parse questions. Imported LLaVA data have `face=None`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from trainables.errors import UserError, unknown_choice

ATTRIBUTES = ("time", "weather", "battery", "weather_corner", "battery_corner")
WEATHERS = ("sunny", "cloudy", "raining")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class WatchFace:
    """The ground truth of one smart-watch image."""

    hour: int
    """0-11, the hour hand."""
    minute: int
    """0-59."""
    second: int
    """0-59."""
    battery: int
    """0-100, the battery level in percent."""
    weather: str
    """One of WEATHERS, the icon drawn."""
    weather_corner: str
    """One of CORNERS, where the weather icon is."""
    battery_corner: str
    """One of CORNERS, where the battery indicator is; never the weather corner."""

    def answer(self, attribute: str) -> str:
        """The canonical answer text: "03:07:59", "raining", "42%", "top-left"."""
        if attribute == "time":
            return f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}"
        if attribute == "battery":
            return f"{self.battery}%"
        if attribute in ("weather", "weather_corner", "battery_corner"):
            return getattr(self, attribute)
        raise ValueError(f"unknown attribute {attribute!r}; valid: {', '.join(ATTRIBUTES)}")


class Task(StrEnum):
    VQA = "vqa"
    CAPTION = "caption"
    GENERATION = "generation"


@dataclass(frozen=True)
class Turn:
    """One question and its answer."""

    question: str
    answer: str
    attribute: str | None
    """Which ATTRIBUTES entry a VQA turn asks; None for captions, prompts and imported data."""


@dataclass(frozen=True)
class Record:
    """One training or test example: an image and a conversation about it."""

    record_id: str
    image_id: str
    split: str
    """"train" or "test"."""
    task: Task
    turns: tuple[Turn, ...]
    """VQA: 1-4 turns; caption: 1 (answer = the caption); generation: 1 (question = the prompt,
    answer = the short reply; the image follows it)."""
    mentioned: tuple[str, ...]
    """Attributes stated in a caption answer or generation prompt, in ATTRIBUTES order."""
    face: WatchFace | None
    """Ground truth of the image; None for imported LLaVA data."""


_TIME = re.compile(r"(\d\d):(\d\d):(\d\d)")
_BATTERY = re.compile(r"(\d{1,3})%?")


@dataclass(frozen=True)
class HideRule:
    """An ATTR=VALUE rule of finding 3: matching training images get no understanding records."""

    attribute: str
    value: str
    """The canonical answer text, as WatchFace.answer gives it."""

    @classmethod
    def parse(cls, text: str) -> HideRule:
        """'weather=raining' -> HideRule('weather', 'raining'); UserError naming the bad part."""
        field = "--hide-from-understanding"
        if "=" not in text:
            raise UserError(f"{field} {text!r}: expected ATTR=VALUE, e.g. weather=raining")
        attribute, value = (part.strip() for part in text.split("=", 1))
        if attribute not in ATTRIBUTES:
            raise unknown_choice(f"{field} attribute", attribute, ATTRIBUTES)
        if attribute == "weather" and value not in WEATHERS:
            raise unknown_choice(f"{field} weather", value, WEATHERS)
        if attribute.endswith("_corner") and value not in CORNERS:
            raise unknown_choice(f"{field} {attribute}", value, CORNERS)
        if attribute == "battery":
            match = _BATTERY.fullmatch(value)
            if not match or int(match[1]) > 100:
                raise UserError(f"{field} battery: bad value {value!r}; expected 0-100, e.g. battery=42%")
            value = f"{int(match[1])}%"
        if attribute == "time":
            match = _TIME.fullmatch(value)
            if not match or int(match[1]) > 11 or int(match[2]) > 59 or int(match[3]) > 59:
                raise UserError(f"{field} time: bad value {value!r}; expected hh:mm:ss with hh 00-11, e.g. time=03:07:59")
        return cls(attribute, value)

    def matches(self, face: WatchFace) -> bool:
        return face.answer(self.attribute) == self.value

    def __str__(self) -> str:
        return f"{self.attribute}={self.value}"


def parse_hide_rules(texts: list[str] | tuple[str, ...]) -> tuple[HideRule, ...]:
    """Parsed, de-duplicated and sorted, so that equal rule sets compare equal in manifests."""
    rules = {HideRule.parse(text) for text in texts}
    return tuple(sorted(rules, key=str))


def is_hidden(face: WatchFace | None, rules: tuple[HideRule, ...]) -> bool:
    """True when any rule matches the image (finding 3's held-out knowledge)."""
    return face is not None and any(rule.matches(face) for rule in rules)
