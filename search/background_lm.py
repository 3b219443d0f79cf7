"""The demo's text-pretrained LMs, made in a process of their own while the studies on the random LM run.

    start(plans) -> a process making each missing LM (trainables.pretrain.ensure_text_lm) -> joined before
    the first study that loads one (search/demo.py) -> stop() if the demo ends first

The pretraining keeps to one thread (trainables.pretrain.PRETRAINING_THREADS: its LM must not depend on the
machine's cores), so made in the foreground it would leave one core of two idle for its 3-4 minutes. Beside
two trials it shares the cores instead. Nothing depends on this process succeeding: each sweep still calls
ensure_text_lm before its first trial, under the same file lock, and so makes the LM itself, and reports
why it cannot, if the process did not.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from search.sweep import text_lm_configs
from search.sweep_plan import Plan
from trainables.config import TrainConfig


def uses_text_lm(plan: Plan) -> bool:
    return bool(text_lm_configs(plan))


def start(plans: list[Plan]) -> Any | None:
    """A started daemon process making the text-pretrained LMs of `plans` not made yet; None when none is missing."""
    from trainables.pretrain import MANIFEST, text_lm_folder

    missing = [config for plan in plans for config in text_lm_configs(plan)
               if not (text_lm_folder(config) / MANIFEST).is_file()]  # two studies' shared LM: made once, then checked
    if not missing:
        return None
    process = multiprocessing.get_context("spawn").Process(target=make, args=(missing,), name="uvlm-text-lm",
                                                           daemon=True)
    process.start()
    return process


def make(configs: list[TrainConfig]) -> None:
    from trainables.pretrain import ensure_text_lm

    for config in configs:
        ensure_text_lm(config)


def stop(process: Any | None) -> None:
    """End the process if it still runs (the demo stopped before a study needed its LM); its partial folder is
    cleared by the next pretraining."""
    if process is not None and process.is_alive():
        process.terminate()
        process.join()
