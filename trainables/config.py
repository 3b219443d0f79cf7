"""Typed configuration of one training run: every axis the study varies is a field here.

A run is fully described by a `TrainConfig`. Space files (spaces/*.yaml) and
`uvlm train --set key=value` address its fields by dotted names such as
`data.arm` or `generation.space`; `flatten()` gives the same dotted names for
MLflow parameters. Validation happens once, at the boundary, in `load_config`.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainables import limits
from trainables.data.records import Task
from trainables.errors import UserError, nearest
from trainables.yamlfile import load_yaml, read_yaml


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False, allow_inf_nan=False)


class Arm(enum.StrEnum):
    """Which record kinds a run trains on (finding 1's arms)."""

    UNDERSTANDING = "understanding"  # VQA + caption records only
    GENERATION = "generation"  # text-to-image records only
    MIXED = "mixed"  # both


class BudgetUnit(enum.StrEnum):
    """How the training budget is counted; matched budgets make arms comparable."""

    EPOCHS = "epochs"  # passes over the run's own training records (the paper: 1)
    STEPS = "steps"  # optimiser steps, equal across arms
    SAMPLES = "samples"  # training records seen, equal across arms


class LMTrainability(enum.StrEnum):
    FULL = "full"
    LORA = "lora"
    FROZEN = "frozen"


class PartTrainability(enum.StrEnum):
    TRAIN = "train"
    FROZEN = "frozen"


class EncoderName(enum.StrEnum):
    """Understanding encoders (image -> features the LM reads)."""

    PATCH = "patch"  # raw pixel patches
    SIGLIP = "siglip"  # transformers SiglipVisionModel, frozen
    CLIP = "clip"  # transformers CLIPVisionModel, frozen
    VQ = "vq"  # code vectors of the generation tokenizer


class GenerationSpaceName(enum.StrEnum):
    """Generation spaces (what the LM emits after the image marker)."""

    PATCH = "patch"  # continuous pixel patches of a downsampled image
    VQ = "vq"  # discrete codes of a VQ tokenizer (k-means codebook on CPU)
    SIGLIP = "siglip"
    CLIP = "clip"
    SAME = "same"  # the understanding encoder's own space


class ImageLoss(enum.StrEnum):
    COSINE = "cosine"  # 1 - cos, continuous spaces
    MSE = "mse"  # continuous spaces
    CE = "ce"  # cross-entropy over the codebook, discrete spaces


class ProjectorKind(enum.StrEnum):
    LINEAR = "linear"
    MLP2X_GELU = "mlp2x_gelu"


class AffineTarget(enum.StrEnum):
    UNDERSTANDING = "understanding"
    GENERATION = "generation"


class Precision(enum.StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"


class Strategy(enum.StrEnum):
    DDP = "ddp"
    FSDP = "fsdp"


class DataConfig(StrictModel):
    path: str = "data/smartwatch"
    """Dataset folder (Parquet shards + manifest.json). A smartwatch dataset is generated there when missing."""
    train_images: int | None = Field(default=None, ge=1, le=limits.IMAGES[1])
    """Training images used (the data-size axis); None = all. The first N of a seeded order, so every arm shares them."""
    arm: Arm = Arm.MIXED
    """Record kinds trained on: understanding, generation or mixed."""
    generation_ratio: float = Field(default=1.0, gt=0, le=limits.FACTOR[1])
    """Generation images per understanding image in the mixed and generation arms."""
    test_images: int | None = Field(default=300, ge=1, le=limits.IMAGES[1])
    """Test images evaluated; None = all."""
    generate_train_images: int = Field(default=2000, ge=1, le=limits.IMAGES[1])
    """When `path` is missing: training images to generate."""
    generate_test_images: int = Field(default=300, ge=1, le=limits.IMAGES[1])
    """When `path` is missing: test images to generate."""
    generate_image_size: int = Field(default=64, ge=limits.IMAGE_SIZE[0], le=limits.IMAGE_SIZE[1])
    """When `path` is missing: rendered image side in pixels."""
    hide_from_understanding: list[str] = Field(default_factory=list)
    """When `path` is missing: ATTR=VALUE pairs whose images get only generation records (finding 3)."""
    hide_control: bool = False
    """When `path` is missing: the control of finding 3; hidden images lose their generation records too."""

    @model_validator(mode="after")
    def _control_hides_something(self) -> DataConfig:
        if self.hide_control and not self.hide_from_understanding:
            raise ValueError("data.hide_control needs at least one data.hide_from_understanding ATTR=VALUE rule")
        return self


class TextPretraining(StrictModel):
    """The tiny LM pretrained on the study's language alone before any run (trainables/pretrain.py): conversations
    about random watch faces, no image, so that it knows every answer word ("raining" too) as the paper's pretrained
    LMs know their language. Made once per recipe and LM shape, shared by every seed and arm."""

    steps: int = Field(default=0, ge=0, le=limits.STEPS[1])
    """Optimiser steps; 0 = no pretraining (a random LM, or the checkpoint at lm.pretrained_path)."""
    conversations: int = Field(default=20000, ge=1, le=limits.IMAGES[1])
    """Random watch faces whose questions, answers, captions and prompts make the corpus."""
    batch_size: int = Field(default=64, ge=1, le=limits.BATCH[1])
    lr: float = Field(default=3e-3, gt=0, le=1)
    seed: int = Field(default=0, ge=limits.SEED[0], le=limits.SEED[1])
    """Of the corpus and the initialisation; fixed across run seeds, like a real checkpoint."""
    grid: int = Field(default=4, ge=0, le=limits.PIXELS[1])
    """Cells a side of the faces told as grids of words where a run puts the image's tokens; 0 = no grids. The
    patch encoder's grid (image side / understanding.patch_size: 64 / 16 = 4 by default)."""


class LMConfig(StrictModel):
    pretrained_path: str | None = None
    """Local folder with a transformers causal LM and its tokenizer; None = tiny random Llama from the fields below.
    With a folder, its config.json gives the shape; the fields below are then what `uvlm plan` counts where the
    folder is not on this machine. With lm.pretraining.steps > 0: where the text-pretrained LM is made when missing
    (None = a folder in the cache keyed by its recipe)."""
    pretraining: TextPretraining = Field(default_factory=TextPretraining)
    hidden_size: int = Field(default=128, ge=1, le=limits.WIDTH[1])
    num_layers: int = Field(default=2, ge=1, le=limits.LAYERS[1])
    num_heads: int = Field(default=4, ge=1, le=limits.LAYERS[1])
    intermediate_size: int = Field(default=128, ge=1, le=limits.WIDTH[1])
    """MLP width. The tiny default (= hidden_size) starts reading the images sooner than the usual 4x (512) and
    costs less a step (docs/STUDY.md, "Why these budgets"; figures in docs/MEASUREMENTS.md)."""
    max_positions: int = Field(default=256, ge=1, le=limits.POSITIONS[1])
    trainability: LMTrainability = LMTrainability.FULL
    """full: every LM weight trains; lora: peft LoRA adapters only; frozen: nothing in the LM trains."""
    lora_rank: int = Field(default=8, ge=1, le=limits.WIDTH[1])
    lora_alpha: int = Field(default=16, ge=1, le=limits.WIDTH[1])
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them: activations
    shrink from every layer's to about one layer's, for ~1/3 more compute a step (`uvlm plan` shows both)."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> LMConfig:
        if self.pretrained_path is None and self.hidden_size % self.num_heads:
            raise ValueError(f"lm.hidden_size ({self.hidden_size}) must be a multiple of lm.num_heads ({self.num_heads})")
        return self


class UnderstandingConfig(StrictModel):
    encoder: EncoderName = EncoderName.PATCH
    """patch | siglip | clip | vq."""
    pretrained_path: str | None = None
    """Local folder with a pretrained siglip/clip vision model; None = random init from a small config."""
    patch_size: int = Field(default=16, ge=1, le=limits.PIXELS[1])
    """Pixels per patch side: the image becomes (image_size / patch_size)^2 tokens."""
    hidden_size: int = Field(default=64, ge=1, le=limits.WIDTH[1])
    """Width of a randomly initialised siglip/clip encoder."""
    image_size: int | None = Field(default=None, ge=1, le=limits.PIXELS[1])
    """The image is resized to this side before encoding; None = the dataset's image size (a pretrained tower uses its own)."""
    projector: ProjectorKind = ProjectorKind.MLP2X_GELU


class GenerationConfig(StrictModel):
    space: GenerationSpaceName = GenerationSpaceName.VQ
    """patch | vq | siglip | clip | same. The default is the paper's discrete path (k-means codes, cross-entropy):
    with patches and the cosine loss the generations were one average watch whatever the prompt
    (docs/MEASUREMENTS.md, "Generation")."""
    image_size: int = Field(default=32, ge=1, le=limits.PIXELS[1])
    """The generation target is the image resized to this side."""
    patch_size: int = Field(default=8, ge=1, le=limits.PIXELS[1])
    """Pixels per generated token side (patch and vq spaces)."""
    codebook_size: int = Field(default=512, ge=limits.CODEBOOK[0], le=limits.CODEBOOK[1])
    """vq: number of k-means codes fitted on the training images (at most their distinct patches). 512 keeps the
    weather icons apart; 256 merge them (docs/MEASUREMENTS.md, "Generation")."""
    codebook_seed: int = Field(default=0, ge=limits.SEED[0], le=limits.SEED[1])
    """vq: seed of the k-means fit. Fixed across run seeds, like a pretrained tokenizer: every seed and arm then
    shares one codebook, one probe and one constant baseline (with the run's seed they moved with it)."""
    vq_pretrained_path: str | None = None
    """vq: local LlamaGen-style VQ checkpoint; None = the k-means codebook."""
    feature_pretrained_path: str | None = None
    """siglip/clip spaces: local folder with a pretrained vision tower; None = random init like the understanding one."""
    loss: ImageLoss | None = None
    """cosine | mse | ce; None (not given) = ce for a discrete space, cosine for a continuous one."""
    alpha: float = Field(default=2.0, ge=0, le=limits.FACTOR[1])
    """Total loss = text CE + alpha * image loss. 2.0 (the paper: 0.2 with VQ codes): at 0.2 the codes' cross-entropy
    is a small share of a mixed run's gradient and the generations follow the prompt less; in the default run 2.0
    drew the asked weather a little more surely than 1.0 at the same VQA (docs/MEASUREMENTS.md, "Generation").
    The study space files keep 1.0, the weight their designs were measured at."""
    projector: ProjectorKind = ProjectorKind.LINEAR
    temperature: float = Field(default=0.0, ge=0, le=limits.FACTOR[1])
    """Discrete spaces: free-running codes are sampled from softmax(logits / temperature); 0 = argmax."""
    image_positions: bool = True
    """Add a learned embedding of the next grid cell to the LM input at <boi> and at each image token
    (trained with the generation projector). Without it the tiny LM locates the corners from RoPE alone."""
    input_scale: float | None = Field(default=None, gt=0, le=limits.FACTOR[1])
    """Multiplies the generation projector's output, the image tokens the LM reads. None = auto: the LM's token
    embeddings' mean norm over the projected training tokens' mean norm, both at initialisation, so that image
    tokens enter the LM at the scale of words. 1.0 = unscaled: projected k-means codes are then ~20x a word, and
    the tiny LM was far slower to read the prompt's weather at image positions (docs/MEASUREMENTS.md, "Generation")."""

    @model_validator(mode="before")
    @classmethod
    def _default_loss(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("loss") is None:
            space = str(getattr(data.get("space"), "value", data.get("space") or GenerationSpaceName.VQ.value))
            if space != GenerationSpaceName.SAME.value:  # `same`: TrainConfig knows the encoder
                data = {**data, "loss": ImageLoss.CE if space == GenerationSpaceName.VQ.value else ImageLoss.COSINE}
        return data

    @model_validator(mode="after")
    def _loss_fits_space(self) -> GenerationConfig:
        if self.space == GenerationSpaceName.SAME:
            return self  # depends on the understanding encoder: checked by TrainConfig
        discrete = self.space == GenerationSpaceName.VQ
        if discrete != (self.loss == ImageLoss.CE):
            want = "ce" if discrete else "cosine or mse"
            raise ValueError(f"generation.loss {self.loss.value!r} does not fit generation.space {self.space.value!r}; use {want}")
        return self


class AlignmentConfig(StrictModel):
    affine_strength: float = Field(default=0.0, ge=0.0, lt=1.0)
    """s of the random affine map x -> Q S x + b (0 = identity)."""
    affine_target: AffineTarget = AffineTarget.GENERATION
    """Which vision space the affine map is applied to."""
    affine_seed: int = Field(default=0, ge=limits.SEED[0], le=limits.SEED[1])


class TrainabilityConfig(StrictModel):
    understanding_projector: PartTrainability = PartTrainability.TRAIN
    generation_projector: PartTrainability = PartTrainability.TRAIN
    head: PartTrainability = PartTrainability.TRAIN


class OptimConfig(StrictModel):
    lr: float = Field(default=2e-3, gt=0, le=limits.LEARNING_RATE[1])
    projector_lr: float | None = Field(default=None, gt=0, le=limits.LEARNING_RATE[1])
    """Learning rate of projectors, head and image-cell embeddings; None = half of lr, the paper presets' ratio
    (1e-4 against 2e-4). At CPU scale (lr 2e-3) projectors at lr itself started reading images later and less
    surely, and drew the weather icon less often in the later corners of the default run
    (docs/MEASUREMENTS.md, "The reading threshold and the study budgets")."""
    weight_decay: float = Field(default=0.0, ge=0, le=limits.FACTOR[1])
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    batch_size: int = Field(default=32, ge=1, le=limits.BATCH[1])
    """Global batch size (split across Train workers)."""
    grad_clip: float = Field(default=1.0, gt=0, le=limits.FACTOR[1])

    @property
    def projector_rate(self) -> float:
        return self.lr / 2 if self.projector_lr is None else self.projector_lr


class BudgetConfig(StrictModel):
    unit: BudgetUnit = BudgetUnit.STEPS
    value: float = Field(default=3000, gt=0, le=limits.STEPS[1])
    """The default run's 3,000 steps (about 5 minutes on one thread) take generation past its own threshold,
    which it crosses between 1,500 and 3,000 steps (docs/STUDY.md, "Why these budgets")."""


class EvalConfig(StrictModel):
    every_steps: int = Field(default=250, ge=1, le=limits.STEPS[1])
    """Evaluate on the test split every N steps, and always at the end (unless every_fraction is set)."""
    every_fraction: float | None = Field(default=None, gt=0, le=1)
    """Evaluate at every this fraction of the run's steps instead (0.1: at 10%, 20%, ... of the budget, the
    paper's checkpoints), and always at the end; None = every_steps."""
    max_eval_records: int = Field(default=300, ge=1, le=limits.RECORDS[1])
    """Cap on test records per task in intermediate evaluations (the final one uses all)."""
    along: list[Task] = Field(default_factory=lambda: list(Task), min_length=1)
    """Tasks scored at the evaluations along the run; the final evaluation scores every task. A study
    whose analysis reads only VQA along its runs lists [vqa] and spends no time decoding the rest."""
    grid_images: int = Field(default=16, ge=1, le=limits.GRID_IMAGES[1])
    """Generated images in the saved grid."""
    log_every_steps: int = Field(default=10, ge=1, le=limits.STEPS[1])
    """The training losses' curve: their mean over every N steps, sent to MLflow in one batch per evaluation."""


class RuntimeConfig(StrictModel):
    num_workers: int = Field(default=1, ge=1, le=limits.WORKERS[1])
    """Ray Train workers."""
    strategy: Strategy = Strategy.DDP
    """How workers share the model. ddp: every worker holds all of it and gradients are all-reduced. fsdp: the
    trained weights, their gradients and AdamW states are sharded across the workers (PyTorch FSDP2), the path for
    a full fine-tune too large for one GPU (trainables/sharding.py); it needs lm.trainability full."""
    use_gpu: bool = False
    threads_per_worker: int = Field(default=1, ge=1, le=limits.WORKERS[1])
    length_groups: int = Field(default=2, ge=1, le=limits.BATCH[1])
    """Each worker's share of a batch runs as this many forward/backward passes over records of similar
    length, each padded only to its own longest record: the same gradient with less padding."""
    precision: Precision = Precision.FP32
    """fp32: every weight and the forward in float32. bf16: frozen weights (the pretrained LM's base, the vision
    towers) stored in bfloat16 and the forward under bf16 autocast, on CPU and GPU alike; whatever trains stays
    float32 (trainables/precision.py)."""
    image_memory_gb: float = Field(default=2.0, gt=0, le=limits.FACTOR[1])
    """Working memory per worker for images going through the frozen VQ tokenizer and vision towers: their
    encode and decode run in chunks sized to it, so memory does not grow with the number of images."""
    cache_dir: str | None = None
    """Where fitted VQ codebooks, attribute probes and text-pretrained LMs are cached; None = `.uvlm-cache` beside
    data.path."""


class TrainConfig(StrictModel):
    seed: int = Field(default=0, ge=limits.SEED[0], le=limits.SEED[1])
    """Fixes data order, initialisation and the affine map."""
    data: DataConfig = Field(default_factory=DataConfig)
    lm: LMConfig = Field(default_factory=LMConfig)
    understanding: UnderstandingConfig = Field(default_factory=UnderstandingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    alignment: AlignmentConfig = Field(default_factory=AlignmentConfig)
    trainability: TrainabilityConfig = Field(default_factory=TrainabilityConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="before")
    @classmethod
    def _same_space_default_loss(cls, data: Any) -> Any:
        """`generation.space: same` without a loss: ce when the understanding encoder is vq, else cosine."""
        if not isinstance(data, dict) or not isinstance(data.get("generation"), dict):
            return data
        generation = data["generation"]
        space = str(getattr(generation.get("space"), "value", generation.get("space")))
        if space == GenerationSpaceName.SAME.value and generation.get("loss") is None:
            understanding = data.get("understanding") if isinstance(data.get("understanding"), dict) else {}
            encoder = str(getattr(understanding.get("encoder"), "value", understanding.get("encoder") or EncoderName.PATCH.value))
            loss = ImageLoss.CE if encoder == EncoderName.VQ.value else ImageLoss.COSINE
            data = {**data, "generation": {**generation, "loss": loss}}
        return data

    @model_validator(mode="after")
    def _sharding_needs_a_full_fine_tune(self) -> TrainConfig:
        if self.runtime.strategy == Strategy.FSDP and self.lm.trainability != LMTrainability.FULL:
            raise ValueError(
                f"runtime.strategy 'fsdp' shards a full fine-tune; with lm.trainability {self.lm.trainability.value!r} "
                "the LM's frozen base fits whole on each worker: use runtime.strategy 'ddp'"
            )
        return self

    @model_validator(mode="after")
    def _pretraining_grid_is_the_images(self) -> TrainConfig:
        grid = self.lm.pretraining.grid
        if not (self.lm.pretraining.steps and grid and self.understanding.encoder == EncoderName.PATCH):
            return self
        side = self.understanding.image_size or self.data.generate_image_size
        if side != grid * self.understanding.patch_size:
            raise ValueError(
                f"lm.pretraining.grid {grid} does not fit the images: the patch encoder reads {side}-pixel images in "
                f"{self.understanding.patch_size}-pixel patches, a grid of {side / self.understanding.patch_size:g}; "
                f"set lm.pretraining.grid to that (or 0 for no grids)"
            )
        return self

    @model_validator(mode="after")
    def _same_space_loss(self) -> TrainConfig:
        if self.generation.space == GenerationSpaceName.SAME:
            discrete = self.understanding.encoder == EncoderName.VQ
            if discrete != (self.generation.loss == ImageLoss.CE):
                want = "ce" if discrete else "cosine or mse"
                raise ValueError(
                    f"generation.loss {self.generation.loss.value!r} does not fit generation.space 'same' with "
                    f"understanding.encoder {self.understanding.encoder.value!r}; use {want}"
                )
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """This config with dotted overrides applied (e.g. Optuna's values), validated again."""
        return load_config(self.model_dump(mode="json"), overrides) if overrides else self

    def cache_folder(self) -> Path:
        """Where fitted codebooks, attribute probes and text-pretrained LMs are cached."""
        if self.runtime.cache_dir:
            return Path(self.runtime.cache_dir)
        return Path(self.data.path).resolve().parent / ".uvlm-cache"

    def flatten(self) -> dict[str, Any]:
        """Dotted names to plain values, e.g. {'data.arm': 'mixed', 'lm.hidden_size': 128}."""
        return flatten(self.model_dump(mode="json"))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set tree['a']['b'] = value for dotted 'a.b', checking each name against TrainConfig."""
    *parents, leaf = dotted.split(".")
    node, model = tree, TrainConfig
    for part in parents + [leaf]:
        fields = model.model_fields
        if part not in fields:
            raise UserError(f"unknown config key {dotted!r}{nearest(part, fields)}; valid here: {', '.join(fields)}")
        annotation = fields[part].annotation
        if part == leaf:
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"config key {dotted!r}: {part!r} is not a section")
            model = annotation


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=1e-3' -> ('optim.lr', 0.001); values are read as YAML scalars."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-3")
    key, raw = text.split("=", 1)
    return key.strip(), load_yaml(raw, f"--set {text!r}") if raw.strip() else ""


PRESETS = Path(__file__).parent / "presets"


def config_path(text: str) -> Path:
    """A config file, or the name of a shipped preset (`paper-vicuna7b-siglip-llamagen`, `tiny-cpu`, ...)."""
    path = Path(text)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in text:
        return path
    names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    if text in names:
        return PRESETS / f"{text}.yaml"
    raise UserError(f"config {text!r} is neither a file nor a preset{nearest(text, names)}; presets: {', '.join(names)}")


def load_config(source: dict[str, Any] | str | Path | None = None, overrides: list[str] | dict[str, Any] = ()) -> TrainConfig:
    """Build a validated TrainConfig from a mapping or YAML file plus dotted overrides.

    Errors name the field, the bad value and, for typos, the nearest valid key.
    """
    if source is None:
        tree: dict[str, Any] = {}
    elif isinstance(source, dict):
        tree = yaml.safe_load(yaml.safe_dump(source))  # deep copy of plain data
    else:
        path = Path(source)
        tree = read_yaml(path, "config file") or {}
        if not isinstance(tree, dict):
            raise UserError(f"config file {str(path)!r} must hold a mapping of config sections")
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        set_dotted(tree, key, value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as error:
        raise config_error(error) from None


def config_error(error: ValidationError) -> UserError:
    """The first validation problem as one line naming the dotted field."""
    problem = error.errors()[0]
    loc = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "extra_forbidden":
        *parents, key = [str(part) for part in problem["loc"]]
        model: type[BaseModel] = TrainConfig
        for part in parents:
            model = model.model_fields[part].annotation
        fields = list(model.model_fields)
        return UserError(f"unknown config key {loc!r}{nearest(key, fields)}; valid here: {', '.join(fields)}")
    message = problem["msg"].removeprefix("Value error, ")
    value = problem.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return UserError(f"config {loc or 'file'}: {message}{shown}")
