"""Hand-computed cases for the scorers of trainables/scoring.py (docs/STUDY.md, "Scoring")."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainables.data.records import ATTRIBUTES, CORNERS, WEATHERS, WatchFace
from trainables.scoring import (
    constant_answer_baseline,
    constant_answers,
    constant_caption_baseline,
    cosine_to_target,
    parse_caption,
    probe_accuracy,
    score_caption,
    score_vqa,
    score_vqa_answer,
    token_accuracy,
)

FACE = WatchFace(hour=3, minute=7, second=59, battery=42, weather="raining",
                 weather_corner="top-left", battery_corner="bottom-right")
MIDNIGHT = WatchFace(hour=0, minute=0, second=1, battery=0, weather="sunny",
                     weather_corner="top-right", battery_corner="bottom-left")
CAPTION = ("The time is 03:07:59. It is raining, shown in the top-left corner. "
           "The battery is at 42%, shown in the bottom-right corner.")


def random_faces(n: int, seed: int = 0) -> list[WatchFace]:
    rng = random.Random(seed)
    faces = []
    for _ in range(n):
        weather_corner, battery_corner = rng.sample(CORNERS, 2)
        faces.append(WatchFace(rng.randrange(12), rng.randrange(60), rng.randrange(60), rng.randrange(101),
                               rng.choice(WEATHERS), weather_corner, battery_corner))
    return faces


# --- VQA: every attribute ---------------------------------------------------------------


def test_canonical_answers_score_one_for_every_attribute():
    for face in random_faces(200):
        for attribute in ATTRIBUTES:
            assert score_vqa_answer(attribute, face.answer(attribute), face) == 1.0, (attribute, face)


def test_every_wrong_canonical_answer_scores_below_one():
    for face, other in zip(random_faces(100, seed=1), random_faces(100, seed=2)):
        for attribute in ATTRIBUTES:
            if other.answer(attribute) != face.answer(attribute):
                assert score_vqa_answer(attribute, other.answer(attribute), face) < 1.0


@pytest.mark.parametrize("attribute", ATTRIBUTES)
@pytest.mark.parametrize("garbage", ["", "   ", "banana", "99:99:99", "I don't know.", "rainy", "middle"])
def test_garbage_scores_zero(attribute, garbage):
    assert score_vqa_answer(attribute, garbage, FACE) == 0.0


def test_unknown_attribute_is_an_error():
    with pytest.raises(ValueError, match="colour"):
        score_vqa_answer("colour", "red", FACE)


# --- time -------------------------------------------------------------------------------


def test_time_errors_are_circular_across_midnight():
    # hours 11 vs 0 -> 1 (mod 12), minutes 59 vs 0 -> 1, seconds 59 vs 1 -> 2 (mod 60)
    expected = 1 - (1 / 6 + 1 / 30 + 2 / 30) / 3  # = 41/45
    assert score_vqa_answer("time", "11:59:59", MIDNIGHT) == pytest.approx(expected)
    assert expected == pytest.approx(41 / 45)


@pytest.mark.parametrize("answer, expected", [
    ("03:07:59", 1.0),
    ("09:37:29", 0.0),                          # every error at its maximum: 6 h, 30 min, 30 s
    ("06:07:59", 1 - (3 / 6) / 3),              # 3 hours off
    ("00:07:59", 1 - (3 / 6) / 3),              # 3 hours off the other way
    ("03:08:00", 1 - (1 / 30 + 1 / 30) / 3),    # minute and second each 1 off (59 -> 0 wraps)
    ("03:50:59", 1 - (17 / 30) / 3),            # 43 minutes ahead = 17 behind
    ("3:07:59", 1.0),                           # one-digit hour
    ("15:07:59", 0.0),                          # hour out of range: unparsable
    ("03:60:59", 0.0),                          # minute out of range: unparsable
    ("03:07", 0.0),                             # no seconds: unparsable
    ("The time is 03:07:59.", 1.0),
    ("03:07:59 or 04:00:00", 1.0),              # the first time decides
    ("123:07:59", 0.0),                         # not a time
])
def test_time_scores(answer, expected):
    assert score_vqa_answer("time", answer, FACE) == pytest.approx(expected)


def test_twelve_oclock_reads_as_zero():
    assert score_vqa_answer("time", "12:00:01", MIDNIGHT) == 1.0


# --- battery ----------------------------------------------------------------------------


@pytest.mark.parametrize("answer, truth, expected", [
    ("0%", 100, 0.0),
    ("100%", 0, 0.0),
    ("100%", 100, 1.0),
    ("0%", 0, 1.0),
    ("30%", 42, 0.88),
    ("50%", 42, 0.92),
    ("42", 42, 1.0),                 # the % sign is optional in a VQA answer
    ("42 percent", 42, 1.0),
    ("The battery is at 42%.", 42, 1.0),
    ("150%", 42, 0.0),               # out of range: unparsable
    ("101%", 100, 0.0),              # out of range: unparsable, not 0.99
    ("150% or 42%", 42, 0.0),        # the first number decides, even out of range
    ("42.5%", 42, 0.0),              # not a whole number
    ("03:07:59", 42, 0.0),           # a time is not a battery level
])
def test_battery_scores(answer, truth, expected):
    face = WatchFace(3, 7, 59, truth, "raining", "top-left", "bottom-right")
    assert score_vqa_answer("battery", answer, face) == pytest.approx(expected)


# --- weather and corners ----------------------------------------------------------------


@pytest.mark.parametrize("attribute, answer, expected", [
    ("weather", "raining", 1.0),
    ("weather", "Raining.", 1.0),
    ("weather", "  it is RAINING!  ", 1.0),
    ("weather", "sunny", 0.0),
    ("weather", "sunny, not raining", 0.0),    # the first weather word decides
    ("weather", "rain", 0.0),                  # not a word of the vocabulary
    ("weather_corner", "top-left", 1.0),
    ("weather_corner", "Top left.", 1.0),
    ("weather_corner", "in the top-left corner", 1.0),
    ("weather_corner", "top-right", 0.0),
    ("weather_corner", "bottom-left", 0.0),
    ("weather_corner", "bottom-right", 0.0),   # the battery's corner, asked about the weather
    ("battery_corner", "bottom-right", 1.0),
    ("battery_corner", "top-left", 0.0),       # the weather's corner, asked about the battery
    ("battery_corner", "left", 0.0),
])
def test_exact_match_attributes(attribute, answer, expected):
    assert score_vqa_answer(attribute, answer, FACE) == expected


# --- score_vqa --------------------------------------------------------------------------


def test_overall_weights_questions_not_attributes():
    items = [("weather", "raining", FACE)] * 3 + [("battery", "100%", FACE)]
    scores = score_vqa(items)
    assert scores["weather"] == 1.0
    assert scores["battery"] == pytest.approx(0.42)
    assert scores["overall"] == pytest.approx((3 + 0.42) / 4)  # not (1 + 0.42) / 2
    assert list(scores) == ["weather", "battery", "overall"]  # absent attributes are absent


def test_score_vqa_of_nothing_is_empty():
    assert score_vqa([]) == {}


# --- captions ---------------------------------------------------------------------------


def test_canonical_caption_scores_one():
    assert score_caption(CAPTION, FACE, ATTRIBUTES) == 1.0
    assert parse_caption(CAPTION) == {"time": (3, 7, 59), "weather": "raining", "battery": 42,
                                      "weather_corner": "top-left", "battery_corner": "bottom-right"}


def test_generated_captions_and_answers_score_one():
    """The data generator's own texts are right by construction: any other score is a parse bug."""
    from trainables.data.smartwatch import describe, vqa_turns

    rng = np.random.default_rng(0)
    for face in random_faces(300, seed=3):
        caption, mentioned = describe(face, rng)
        assert score_caption(caption, face, mentioned) == 1.0, caption
        for turn in vqa_turns(face, rng):
            assert score_vqa_answer(turn.attribute, turn.answer, face) == 1.0, turn


def test_caption_partial_credit():
    caption = "The time is 03:07:59. It is sunny. The battery is at 30%."
    assert score_caption(caption, FACE, ("time", "weather", "battery")) == pytest.approx((1 + 0 + 0.88) / 3)


def test_caption_time_is_graded():
    caption = "The time is 11:59:59."
    assert score_caption(caption, MIDNIGHT, ("time",)) == pytest.approx(41 / 45)


def test_caption_swapped_corners_score_zero():
    caption = ("The time is 03:07:59. It is raining, shown in the bottom-right corner. "
               "The battery is at 42%, shown in the top-left corner.")
    assert score_caption(caption, FACE, ("weather_corner", "battery_corner")) == 0.0
    assert score_caption(caption, FACE, ATTRIBUTES) == pytest.approx(3 / 5)


def test_caption_corner_before_its_anchor_in_compound_sentence():
    caption = "In the top-left corner it is raining, and in the bottom-right corner the battery is at 42%."
    stated = parse_caption(caption)
    assert stated["weather_corner"] == "top-left"
    assert stated["battery_corner"] == "bottom-right"


def test_caption_corner_without_anchor_is_not_assigned():
    caption = "The time is 03:07:59, shown in the top-left corner. It is raining."
    assert "weather_corner" not in parse_caption(caption)
    assert score_caption(caption, FACE, ("time", "weather", "weather_corner")) == pytest.approx(2 / 3)


def test_caption_unmentioned_attributes_are_ignored_and_missing_ones_score_zero():
    caption = "The time is 03:07:59. It is sunny, shown in the bottom-left corner."
    assert score_caption(caption, FACE, ("time",)) == 1.0                  # wrong weather not asked
    assert score_caption(caption, FACE, ("time", "battery")) == 0.5        # battery not stated


def test_caption_battery_needs_a_percent_sign():
    assert score_caption("The time is 03:07:59 and the battery is 42.", FACE, ("battery",)) == 0.0
    assert score_caption("The battery is 42 percent.", FACE, ("battery",)) == 1.0


def test_caption_with_nothing_mentioned_is_an_error():
    with pytest.raises(ValueError):
        score_caption(CAPTION, FACE, ())


# --- constant-answer baselines ----------------------------------------------------------


def test_constant_answer_baseline():
    train = [("weather", "raining", FACE), ("weather", "sunny", FACE), ("weather", "raining", FACE),
             ("battery", "50%", FACE), ("battery", "42%", FACE)]  # battery tie -> "42%" (smallest)
    assert constant_answers(train) == {"weather": "raining", "battery": "42%"}
    assert constant_answers(list(reversed(train))) == constant_answers(train)
    low = WatchFace(1, 2, 3, 52, "cloudy", "top-left", "top-right")
    test = [("weather", "ignored", FACE), ("weather", "ignored", low), ("battery", "ignored", low),
            ("time", "ignored", low)]  # time never asked in training: scores 0
    scores = constant_answer_baseline(train, test)
    assert scores["weather"] == 0.5
    assert scores["battery"] == pytest.approx(0.9)
    assert scores["time"] == 0.0
    assert scores["overall"] == pytest.approx((1 + 0 + 0.9 + 0) / 4)


def test_constant_caption_baseline():
    train = [("weather", "raining", FACE), ("battery", "42%", FACE)]
    captions = [(FACE, ("weather", "battery")), (MIDNIGHT, ("weather", "battery"))]
    assert constant_caption_baseline(train, captions) == pytest.approx((1 + (0 + 0.58) / 2) / 2)


# --- generation -------------------------------------------------------------------------


def test_cosine_identical_is_one_and_reflected_is_minus_one():
    target = np.random.default_rng(0).normal(loc=5.0, size=(4, 16, 8))
    mean = target.reshape(-1, 8).mean(axis=0)
    assert cosine_to_target(target, target) == pytest.approx(1.0)
    assert cosine_to_target(2 * mean - target, target) == pytest.approx(-1.0)  # negated about the mean


def test_cosine_hand_computed():
    target = np.array([[[2.0, 1.0], [0.0, 1.0]]])  # mean (1, 1) -> centred (1, 0), (-1, 0)
    predicted = np.array([[[2.0, 2.0], [1.0, 0.0]]])  # centred (1, 1), (0, -1): cos 1/sqrt2 and 0
    assert cosine_to_target(predicted, target) == pytest.approx(np.sqrt(2) / 4)


def test_cosine_removes_the_shared_component():
    rng = np.random.default_rng(1)
    offset = np.full(32, 10.0)  # like raw pixels: a large component every patch shares
    target = offset + rng.normal(size=(8, 16, 32))
    unrelated = offset + rng.normal(size=(8, 16, 32))
    norms = np.linalg.norm(target, axis=-1) * np.linalg.norm(unrelated, axis=-1)
    raw = np.mean(np.sum(target * unrelated, axis=-1) / norms)
    assert raw > 0.95
    assert abs(cosine_to_target(unrelated, target)) < 0.1


def test_cosine_accepts_torch_tensors():
    target = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    predicted = target + 0.5 * torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    expected = cosine_to_target(predicted.numpy(), target.numpy())
    bf16 = cosine_to_target(predicted.to(torch.bfloat16), target.to(torch.bfloat16))
    assert bf16 == pytest.approx(expected, abs=0.02)
    assert cosine_to_target(predicted, target) == pytest.approx(expected)


def test_cosine_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes"):
        cosine_to_target(np.zeros((2, 4, 3)), np.zeros((2, 4, 4)))


def test_token_accuracy():
    target = [[1, 2, 3], [4, 5, 6]]
    assert token_accuracy([[1, 0, 3], [4, 5, 0]], target) == pytest.approx(4 / 6)
    assert token_accuracy(torch.tensor(target), torch.tensor(target)) == 1.0
    assert token_accuracy(torch.tensor(target) + 1, torch.tensor(target)) == 0.0
    with pytest.raises(ValueError, match="shapes"):
        token_accuracy([[1, 2]], [[1, 2, 3]])


def test_probe_accuracy_scores_on_the_vqa_scale():
    faces = [FACE, MIDNIGHT]

    def probe(tokens):
        assert tokens.shape == (2, 16)
        return {"weather": ["raining", "raining"], "battery": ["42%", "50%"]}

    scores = probe_accuracy(probe, np.zeros((2, 16)), faces)
    assert scores == pytest.approx({"weather": 0.5, "battery": 0.75, "overall": 0.625})
    with pytest.raises(ValueError, match="images"):
        probe_accuracy(lambda tokens: {"weather": ["raining"]}, np.zeros((2, 16)), faces)


def test_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_shifted_one():
    from scipy import linalg

    from trainables.scoring import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)  # same covariance, mean moved by 2 in 6 dims
    b = rng.normal(size=(300, 6)) * 3.0
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(a, b[:, :5])
