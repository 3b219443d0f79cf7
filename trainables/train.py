"""The training recipe of one run: setup -> train -> evaluate -> report, per Ray Train worker.

`train_loop_per_worker(loop_config)` is the Ray Train worker function
(`trainables.launch.fit` builds the TorchTrainer around it); `run_in_tune_trial`
runs the same recipe in a Tune trial's own process (a sweep's one-worker
trials); `run_local` runs it in-process without Ray (`uvlm train --no-ray`).
loop_config = {"train": TrainConfig, "out_dir": str, "mlflow": {"tracking_uri", "run_id"} | None,
               "fail_at_step": int | None (a rehearsed failure: `uvlm rehearse`)}.

Workers: every worker builds the same global batch of the step and takes every
W-th record of it; losses are sums divided by the *global* answer/image token
counts (times W, because DDP and FSDP average gradients), so W workers take
exactly the step of one worker on the same global batch. runtime.strategy
chooses DDP (the model whole on every worker) or FSDP (trainables/sharding.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml

from trainables import sharding
from trainables.budget import total_steps
from trainables.config import EvalConfig, Strategy, TrainConfig
from trainables.data.records import Task
from trainables.encoders import to_float_images
from trainables.errors import UserError
from trainables.evaluate import Evaluator, Shard
from trainables.freezing import apply_trainability
from trainables.mlflow_names import (AFFINE_FILE, CONFIG_FILE, GENERATED_IMAGE, METRICS_FILE, RUN_FILES, TRAIN_CURVE, Metric,
                                     Tag, overall)
from trainables.chunks import set_image_budget
from trainables.model import UnifiedVLM, build_model
from trainables.precision import autocast, trained_in_fp32
from trainables.rundata import Order, RunData, global_counts, length_groups
from trainables.sequences import Example, collate
from trainables.spaces import needs_vq
from trainables.tokenizer import PretrainedTokenizer, TextTokenizer

CHECKPOINT_FILE = "state.pt"


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: the run stops and is recorded as failed."""


class RehearsedFailure(RuntimeError):
    """A failure `uvlm rehearse` asks for once, mid-run, so that the run must resume from its last checkpoint."""


# -- where the recipe runs ----------------------------------------------------------------------
class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...

    def checkpoint(self) -> Path | None: ...


class LocalSession:
    """In-process, one worker: checkpoints are kept in the run folder."""

    rank, world_size, device = 0, 1, torch.device("cpu")

    def __init__(self, out_dir: Path):
        self.kept = out_dir / "checkpoint"

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            self.kept.mkdir(parents=True, exist_ok=True)
            (checkpoint_dir / CHECKPOINT_FILE).replace(self.kept / CHECKPOINT_FILE)

    def checkpoint(self) -> Path | None:
        return None  # a local run starts fresh


class RaySession:
    """A Ray Train worker (`ray.train`), or the one worker that is a Ray Tune trial's own process
    (`ray.tune`): the same report / get_checkpoint / Checkpoint API, with rank and device from Train."""

    def __init__(self, api=None, device: torch.device | None = None):
        import ray.train

        self.api = api or ray.train
        if self.api is ray.train:
            import ray.train.torch

            context = ray.train.get_context()
            self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
            self.device = ray.train.torch.get_device()
        else:
            self.rank, self.world_size, self.device = 0, 1, device or torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL's object collectives use the current device

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = self.api.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self.api.report(metrics, checkpoint=checkpoint)

    def checkpoint(self) -> Path | None:
        found = self.api.get_checkpoint()
        if found is None:
            return None
        with found.as_directory() as folder:
            local = Path(tempfile.mkdtemp(prefix="uvlm-resume-"))
            (local / CHECKPOINT_FILE).write_bytes((Path(folder) / CHECKPOINT_FILE).read_bytes())
        return local


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function."""
    # Ray Train sets the worker's root logger to INFO, and logs every report through a logger outside
    # `ray.train` (RunConfig's LoggingConfig does not reach it): a line per evaluation, under the progress bar.
    logging.getLogger().setLevel(logging.WARNING)
    Recipe(loop_config, RaySession()).run()


def run_in_tune_trial(loop_config: dict[str, Any]) -> dict[str, float]:
    """The recipe as the one worker of a Ray Tune trial, in the trial's process: -> the final metrics."""
    from ray import tune

    device = torch.device("cuda" if loop_config["train"].runtime.use_gpu else "cpu")
    return Recipe(loop_config, RaySession(tune, device)).run()


def run_local(loop_config: dict[str, Any]) -> dict[str, float]:
    """The same recipe in this process (no Ray): returns the final metrics."""
    return Recipe(loop_config, LocalSession(Path(loop_config["out_dir"]))).run()


# -- the recipe ---------------------------------------------------------------------------------
class Recipe:
    def __init__(self, loop_config: dict[str, Any], session: Session):
        self.config: TrainConfig = loop_config["train"]
        self.out_dir = Path(loop_config["out_dir"])
        self.mlflow = loop_config.get("mlflow")
        self.session = session
        self.rank0 = session.rank == 0
        self.logger = None
        self.fail_at_step: int | None = loop_config.get("fail_at_step")
        self.resumed_from: int | None = None

    def run(self) -> dict[str, float]:
        started = time.perf_counter()
        self.setup()
        self.setup_seconds = time.perf_counter() - started
        try:
            self.train()
            return self.report()
        except NonFiniteLoss as error:
            if self.logger:
                self.logger.tags({Tag.ERROR: str(error)})
            raise

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        config = self.config
        torch.set_num_threads(config.runtime.threads_per_worker)
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.cache_dir = config.cache_folder()
        self.data = RunData(config, config.data.path)
        if config.lm.pretraining.steps:
            from trainables.pretrain import ensure_text_lm

            ensure_text_lm(config)  # made by the driver before trials start; here for a run started without one
        self.tok = self._setup_tokenizer()
        self.model = self._setup_model()
        self.sharded = config.runtime.strategy == Strategy.FSDP and self.session.world_size > 1
        if self.sharded:  # before the optimiser, which must hold the sharded parameters
            sharding.shard(self.model)
        self.examples = self.data.examples(self.tok, self.model.encoder.num_tokens, self.model.space.num_tokens,
                                           self.model.lm.config.max_position_embeddings)
        self.steps = total_steps(config, len(self.examples))
        self.order = Order([e.generation for e in self.examples], config.seed)
        self.optimiser, self.scheduler = self._setup_optimiser()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.eval_steps = evaluation_steps(config.eval, self.steps)
        self.step, self.samples, self.train_seconds, self.eval_seconds = 0, 0, 0.0, 0.0
        self.step_times: list[float] = []  # this session's step durations (the median is the steady state)
        self.window = torch.zeros(4, dtype=torch.float64)  # loss, text, image, steps since the last evaluation
        self.curve_window = torch.zeros(4, dtype=torch.float64)  # the same since the last curve point
        self.curve: list[tuple[int, torch.Tensor]] = []  # (step, means) not yet sent to MLflow
        self._resume()
        self.ddp = self._setup_ddp()
        self.fixed: dict[str, float] = {}
        # Every worker scores its share of the test prompts; rank 0 gathers and scores them.
        self.evaluator = Evaluator(self.data, self.tok, self.model.encoder.num_tokens, self.cache_dir,
                                   Shard(self.session.rank, self.session.world_size))
        if self.rank0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_files()
            self.fixed = self.evaluator.baselines() | self.evaluator.fit_probe(self.model)
            self.fixed |= self.evaluator.probe_baseline(self.model, self.sample_tokens)
            if self.mlflow:
                from trainables.mlflow_io import RunLogger

                self.logger = RunLogger(self.mlflow["tracking_uri"], self.mlflow["run_id"])
                self.logger.params(config.flatten())
                self.logger.params({f"trainable_params.{k}": v[0] for k, v in self.param_counts.items()})

    def _setup_tokenizer(self) -> TextTokenizer:
        if self.config.lm.pretrained_path:
            return PretrainedTokenizer(self.config.lm.pretrained_path)
        return self.data.word_tokenizer()

    def _setup_vq(self) -> torch.nn.Module | None:
        config = self.config
        if not needs_vq(config.generation, config.understanding):
            return None
        if config.generation.vq_pretrained_path:
            from trainables.vq import load_vq

            return load_vq(config.generation.vq_pretrained_path, config.generation.image_size)
        from trainables.vq import fit_kmeans_vq

        g = config.generation
        return fit_kmeans_vq(self.data.train.images, g.image_size, g.patch_size, g.codebook_size,
                             g.codebook_seed, self.cache_dir, self.data.fingerprint)

    def _setup_model(self) -> UnifiedVLM:
        config = self.config
        model = build_model(config, self.tok, self.data.image_size, self._setup_vq())
        self.param_counts = apply_trainability(model, config.lm, config.trainability, self.tok.added_ids)
        trained_in_fp32(model)
        if config.lm.activation_checkpointing:
            # use_reentrant=False: the frozen embeddings' output needs no grad for the recomputation to reach LoRA
            model.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        set_image_budget(model, config.runtime.image_memory_gb * 2**30)
        model.to(self.session.device)  # before fit_stats: its sample goes through the towers and the VQ on the device
        sample = self.data.train.images[:512] if len(self.data.train.images) else self.data.test.images[:512]
        self.sample_tokens = model.fit_stats(to_float_images(sample).to(self.session.device))
        return model

    def _setup_optimiser(self):
        config, model = self.config, self.model
        lm_params = [p for p in model.lm.parameters() if p.requires_grad]
        lm_ids = {id(p) for p in model.lm.parameters()}
        other = [p for p in model.parameters() if p.requires_grad and id(p) not in lm_ids]
        groups = [{"params": lm_params, "lr": config.optim.lr},
                  {"params": other, "lr": config.optim.projector_rate}]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise UserError("nothing to train: the LM, both projectors and the head are all frozen")
        optimiser = torch.optim.AdamW(groups, weight_decay=config.optim.weight_decay)
        total = self.steps
        warmup = max(1, round(config.optim.warmup_ratio * total))

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 0
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)

    def _setup_ddp(self) -> torch.nn.Module:
        if self.session.world_size == 1 or self.sharded:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.session.device.index] if self.session.device.type == "cuda" else None
        # find_unused_parameters: a batch without generation records leaves the head unused.
        return DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=True)

    def _resume(self) -> None:
        folder = self.session.checkpoint()
        if folder is None:
            return
        state = torch.load(folder / CHECKPOINT_FILE, weights_only=True,
                           map_location="cpu" if self.sharded else self.session.device)
        if self.sharded:
            sharding.load_full_state(self.model, self.optimiser, state["model"], state["optimiser"])
        else:
            self.model.load_state_dict(state["model"], strict=False)
            self.optimiser.load_state_dict(state["optimiser"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.samples, self.train_seconds = state["step"], state["samples"], state["train_seconds"]
        self.resumed_from = self.step

    def _write_run_files(self) -> None:
        (self.out_dir / CONFIG_FILE).write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        if not self.model.affine_u.identity or not self.model.affine_g.identity:
            (self.model.affine_u if not self.model.affine_u.identity else self.model.affine_g).save(self.out_dir / AFFINE_FILE)
        self.tok.save(self.out_dir / "tokenizer")

    # -- train --------------------------------------------------------------------------------
    def train(self) -> None:
        config, world = self.config, self.session.world_size
        from tqdm import tqdm

        bar = tqdm(total=self.steps, initial=self.step, desc="train", unit="step", mininterval=10,
                   disable=not self.rank0, file=sys.stderr)
        self.model.train()  # from_pretrained leaves an LM in eval mode, where activation checkpointing is skipped
        while self.step < self.steps:
            started = time.perf_counter()
            global_batch = [self.examples[i] for i in self.order.batch(self.step, config.optim.batch_size)]
            loss, text, image = self.train_step(global_batch)
            self.scheduler.step()
            self.step += 1
            self.samples += len(global_batch)
            self.step_times.append(time.perf_counter() - started)
            self.train_seconds += self.step_times[-1]
            losses = torch.tensor([loss, text, image, 1.0], dtype=torch.float64)
            self.window += losses / world
            self.curve_window += losses  # rank 0's own estimate of the global means (its share's sums x W / global counts)
            if self.step % config.eval.log_every_steps == 0:
                self.curve.append((self.step, self.curve_window[:3] / self.curve_window[3]))
                self.curve_window.zero_()
            bar.update(1)
            if self.step == self.fail_at_step and self.resumed_from is None:
                raise RehearsedFailure(f"rehearsed failure at step {self.step}: the run resumes from its last checkpoint")
            if self.step in self.eval_steps:
                metrics, _ = self.evaluate(limit=config.eval.max_eval_records, tasks=config.eval.along)
                bar.set_postfix_str(f"loss {metrics[Metric.TRAIN_LOSS]:.3f} vqa {metrics.get(overall(Metric.VQA), float('nan')):.3f}")
        bar.close()

    def train_step(self, global_batch: list[Example]) -> tuple[float, float, float]:
        """One optimiser step on the step's global batch: this worker's share, in length groups whose
        gradients add up to the share's. -> this worker's (loss, text loss, image loss)."""
        config, session, model = self.config, self.session, self.model
        text_n, image_n = global_counts(global_batch, model.space.num_tokens)
        groups = length_groups(global_batch[session.rank :: session.world_size], config.runtime.length_groups)
        self.optimiser.zero_grad(set_to_none=True)
        text_total = image_total = 0.0
        for index, group in enumerate(groups):
            batch = collate(group, self.data.train.images, self.tok).to(session.device)
            last = index == len(groups) - 1
            no_sync = self.ddp.no_sync() if not last and self.ddp is not model else contextlib.nullcontext()
            with no_sync:  # DDP all-reduces once, in the last group's backward
                with autocast(config.runtime.precision, session.device):
                    out = self.ddp(batch)
                text = out["text_sum"] * (session.world_size / max(text_n, 1))
                image = out["image_sum"] * (session.world_size / max(image_n, 1))
                loss = text + model.alpha * image
                if not torch.isfinite(loss.detach()):
                    raise NonFiniteLoss(f"the training loss became {loss.item()} at step {self.step + 1}; try a lower optim.lr")
                loss.backward()
            text_total, image_total = text_total + text.item(), image_total + image.item()
        torch.nn.utils.clip_grad_norm_(self.trainable, config.optim.grad_clip)
        self.optimiser.step()
        return text_total + model.alpha * image_total, text_total, image_total

    # -- evaluate -----------------------------------------------------------------------------
    def train_metrics(self) -> dict[str, float]:
        window = self.window.to(self.session.device, copy=True)  # a collective's tensor lives on the worker's device (NCCL)
        if self.session.world_size > 1:  # every worker's share of the mean
            torch.distributed.all_reduce(window)
        window = window.cpu()
        n = max(window[3].item(), 1.0)
        self.window.zero_()
        return {Metric.STEP: self.step, Metric.TRAIN_LOSS: window[0].item() / n, Metric.TRAIN_TEXT_LOSS: window[1].item() / n,
                Metric.TRAIN_IMAGE_LOSS: window[2].item() / n, Metric.TRAIN_SAMPLES: self.samples}

    def evaluate(self, limit: int | None, tasks: Collection[Task] = tuple(Task), final: bool = False) -> tuple[dict[str, float], torch.Tensor | None]:
        """Every rank answers its share of the prompts, rank 0 scores them all; every rank reports (Ray Train needs
        all), rank 0 with a checkpoint."""
        metrics = self.train_metrics()
        started = time.perf_counter()
        gathered = sharding.whole(self.model) if self.sharded else contextlib.nullcontext()
        with gathered, autocast(self.config.runtime.precision, self.session.device):
            test_metrics, pictures = self.evaluator.run(self.model, limit, tasks, final)
        self.eval_seconds += time.perf_counter() - started
        if self.rank0:
            metrics |= test_metrics
            if final:
                metrics |= self.fixed | {
                    Metric.TRAIN_SECONDS: self.train_seconds,
                    Metric.STEP_SECONDS: self.train_seconds / max(self.step, 1),
                    Metric.STEP_SECONDS_MEDIAN: float(np.median(self.step_times)) if self.step_times else 0.0,
                    Metric.SETUP_SECONDS: self.setup_seconds,
                    Metric.EVAL_SECONDS: self.eval_seconds,
                } | ({Metric.RESUMED_FROM_STEP: self.resumed_from} if self.resumed_from is not None else {})
                if self.session.device.type == "cuda":
                    metrics[Metric.PEAK_MEMORY] = torch.cuda.max_memory_allocated(self.session.device) / 2**30
            if self.logger:
                self.logger.metrics({k: v for k, v in metrics.items() if k not in TRAIN_CURVE}, self.step)
                self.logger.curve(TRAIN_CURVE, [(step, means.tolist()) for step, means in self.curve])
                self.curve.clear()
        state = self._checkpoint_state()
        with tempfile.TemporaryDirectory(prefix="uvlm-ckpt-") as folder:
            if self.rank0:
                torch.save(state, Path(folder) / CHECKPOINT_FILE)
            self.session.report(metrics, Path(folder) if self.rank0 else None)
        return metrics, pictures

    def _checkpoint_state(self) -> dict[str, Any] | None:
        """What rank 0 saves: what trains, the fitted buffers, the optimiser and the schedule. Every rank calls
        it, because a sharded model gathers its state collectively; -> None on other ranks."""
        if self.sharded:
            model_state, optimiser_state = sharding.full_state(self.model, self.optimiser)
        elif self.rank0:
            model_state, optimiser_state = self.model.state_dict(), self.optimiser.state_dict()
        if not self.rank0:
            return None
        trainable = {name for name, p in self.model.named_parameters() if p.requires_grad}
        kept = {name: t for name, t in model_state.items() if name in trainable or name.startswith(("gen_", "und_"))}
        return {"model": kept, "optimiser": optimiser_state, "scheduler": self.scheduler.state_dict(),
                "step": self.step, "samples": self.samples, "train_seconds": self.train_seconds}

    # -- report -------------------------------------------------------------------------------
    def report(self) -> dict[str, float]:
        """Final evaluation on the whole test split; rank 0 writes metrics.json and generated.png."""
        final, pictures = self.evaluate(limit=None, final=True)
        if not self.rank0:
            return final
        (self.out_dir / METRICS_FILE).write_text(json.dumps(final, indent=2, sort_keys=True))
        if pictures is not None:
            save_grid(pictures, self.evaluator.data.test.images, [p.example.image_index for p in self.evaluator.generations],
                      self.config.eval.grid_images, self.out_dir / GENERATED_IMAGE)
        if self.logger:
            self.logger.artifacts([self.out_dir / name for name in RUN_FILES])
        return final


def evaluation_steps(config: EvalConfig, steps: int) -> set[int]:
    """The steps after which a run evaluates along the way (the final evaluation comes after the last step)."""
    if config.every_fraction is None:
        return set(range(config.every_steps, steps, config.every_steps))
    count = math.ceil(1 / config.every_fraction - 1e-9)
    return {step for k in range(1, count) if 0 < (step := round(k * config.every_fraction * steps)) < steps}


def save_grid(generated: torch.Tensor, test_images: torch.Tensor, rows: list[int], count: int, path: Path) -> None:
    """A PNG of up to `count` generations (bottom of each pair of rows) under their test images (top)."""
    from PIL import Image

    count = min(count, len(generated))
    side = generated.shape[-1]
    columns = min(8, count)
    truth = torch.nn.functional.interpolate(to_float_images(test_images[rows[:count]]), size=(side, side), mode="area")
    scale = max(1, 64 // side)
    pad = 2
    cell = side * scale + pad
    lines = math.ceil(count / columns)
    canvas = Image.new("RGB", (columns * cell + pad, 2 * lines * cell + pad), (128, 128, 128))
    for i in range(count):
        for j, image in enumerate((truth[i], generated[i])):
            array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(array).resize((side * scale, side * scale), Image.NEAREST)
            canvas.paste(tile, (pad + (i % columns) * cell, pad + (2 * (i // columns) + j) * cell))
    canvas.save(path)

