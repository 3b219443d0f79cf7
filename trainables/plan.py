"""A run's memory and time per worker, estimated from its config before anything is loaded (`uvlm plan`).

Parameter counts are exact: the LM, the vision tower and the VQ tokenizer are built on PyTorch's
`meta` device (no memory, no weights read) from their checkpoints' config.json where the folders
exist, else from the config's own shape fields (the paper presets carry Vicuna-7B's). Memory per
worker, in the order a run allocates it:

  frozen weights       parameters that never train, in the precision policy's frozen dtype
  trained weights      fp32 (trainables/precision.py); gradients fp32; AdamW states 2 x fp32;
                       DDP's gradient buckets one more fp32 copy. Under FSDP (runtime.strategy) the
                       three are 1/workers each, no buckets, and the units being computed are gathered
                       whole (the root and two decoder layers, weights and gradients)
  image working set    runtime.image_memory_gb (frozen VQ and tower encode/decode run in chunks of it)
  activations          the largest length group's tokens (batch / workers / length_groups records) x
                       the bytes a decoder layer keeps per token for its backward (below) x layers,
                       plus the logits; with activation checkpointing one layer's input per layer
                       plus one layer's whole set during the recomputation
  evaluation           the KV cache of an evaluation batch (64 prompts) at its longest sequence, and under
                       FSDP the whole fp32 model gathered; not alive with the activations, so the peak
                       takes the larger of the two

Time: training FLOPs (2 x parameters x tokens forward; backward 2x that for trained weights, 1x for
frozen ones, whose input gradients are still needed; +1 forward with checkpointing) at an assumed
model FLOP utilisation; evaluation as a memory-bound decode (the weights read once per token step).
benchmarks/plan_memory.py checks the memory estimate against measured peaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.accelerators import Accelerator
from trainables.budget import planned_steps
from trainables.config import Arm, EncoderName, GenerationSpaceName, LMTrainability, ProjectorKind, Strategy, TrainConfig
from trainables.evaluate import EVAL_BATCH
from trainables.precision import frozen_dtype
from trainables.train import evaluation_steps

GiB = 2**30
ASSUMED_MFU = 0.35
"""Model FLOP utilisation assumed for training time (LLaVA-style LoRA runs report 30-45% on A100/H100)."""
OVERHEAD_GB = 2.0
"""CUDA context, NCCL buffers and the caching allocator's slack, per worker."""
UNKNOWN_VOCABULARY = 32_000
"""Vocabulary assumed for a pretrained LM whose folder is not on this machine (Llama's, Vicuna's)."""
TEXT_TOKENS = {"understanding": 96, "generation": 48}
"""Text tokens of a record besides its image tokens: a smart-watch VQA conversation (up to four turns) or caption,
and a generation prompt with its reply (measured on the data: 40-90 and 25-45 with the word tokenizer)."""
BYTES_PER_TOKEN_LAYER = "50 x hidden + 10 x intermediate"
"""Activation bytes a Llama decoder layer keeps per token for its backward in bf16 autocast (twice that in fp32).
Measured on CPU (benchmarks/plan_memory.py, peak RSS): 91 KB at 1024/4096, 46-51 KB at 512/2048."""
RECOMPUTED_LAYERS = 2.5
"""With activation checkpointing: the recomputed layer's activations and its backward's temporaries, in layers
(measured on CPU: a constant ~240 MB beside ~2.5 MB a layer, 1,216 tokens at 1024/4096)."""
ANSWER_TOKENS = 16
"""Tokens an evaluation decodes for a VQA answer."""


@dataclass(frozen=True)
class Counts:
    """Parameters of each part, and the LM's shape as the activation estimate needs it."""

    lm_frozen: int
    lm_trained: int
    lm_total: int
    lm_layer: int  # parameters of one decoder layer (an FSDP unit)
    layers: int
    hidden: int
    intermediate: int
    vocabulary: int
    heads_kv_width: int  # key/value width per layer (GQA: num_key_value_heads x head_dim)
    adapters: int  # projectors, head, image-cell embeddings: always trained unless frozen by policy
    towers: int  # frozen vision tower(s)
    vq: int  # frozen VQ tokenizer (fp32)
    n_und: int
    n_gen: int
    assumed: tuple[str, ...]  # what was not read from a checkpoint


@dataclass(frozen=True)
class Plan:
    config: TrainConfig
    accelerator: Accelerator
    counts: Counts
    rows: tuple[tuple[str, float, str], ...]  # (part, GiB, detail)
    peak_gb: float
    micro_batch: int
    tokens_per_record: int
    steps: int
    evaluations: int
    tokens_per_step: int
    train_tflop_per_step: float
    hours: float  # wall
    gpu_hours: float

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.accelerator.memory_gb


def count_parameters(config: TrainConfig) -> Counts:
    lm, assumed = _meta_lm(config)
    lora = config.lm.trainability == LMTrainability.LORA
    total = sum(p.numel() for p in lm.parameters())
    if config.lm.trainability == LMTrainability.FULL:
        trained = total
    else:
        trained = _lora_parameters(lm, config.lm.lora_rank) if lora else 0
        trained += 2 * 4 * lm.config.hidden_size  # the added tokens' rows (<image>, <boi>, <pad>, ...): negligible
    hidden = lm.config.hidden_size
    heads = lm.config.num_attention_heads
    kv = getattr(lm.config, "num_key_value_heads", heads) * (getattr(lm.config, "head_dim", None) or hidden // heads)
    towers, n_und, und_width, tower_assumed = _towers(config)
    vq, n_gen, codebook, code_dim, vq_assumed = _vq(config, n_und)
    if config.understanding.encoder == EncoderName.VQ:  # the understanding tokens are the VQ's codes
        n_und, und_width = n_gen, code_dim
    adapters = _projector(config.understanding.projector, und_width, hidden)
    gen_width = code_dim if _discrete(config) else (n_gen and und_width)
    adapters += _projector(config.generation.projector, gen_width, hidden)
    adapters += hidden * (codebook if _discrete(config) else gen_width) + n_gen * hidden
    layer = sum(p.numel() for p in lm.get_decoder().layers[0].parameters())
    return Counts(total - (trained if config.lm.trainability == LMTrainability.FULL else 0), trained, total, layer,
                  lm.config.num_hidden_layers, hidden, getattr(lm.config, "intermediate_size", 4 * hidden),
                  lm.config.vocab_size, kv, adapters, towers, vq, n_und, n_gen, assumed + tower_assumed + vq_assumed)


def make_plan(config: TrainConfig, accelerator: Accelerator, tokens_per_record: int | None = None) -> Plan:
    """`tokens_per_record`: a length group's padded length, when known (else estimated from TEXT_TOKENS)."""
    c = count_parameters(config)
    workers = config.runtime.num_workers
    frozen_bytes = torch.finfo(frozen_dtype(config.runtime.precision)).bits // 8
    act_bytes = 2 if config.runtime.precision.value == "bf16" else 4
    trained = c.lm_trained + c.adapters
    sharded = config.runtime.strategy == Strategy.FSDP and workers > 1
    shards = workers if sharded else 1
    share = f"; 1/{workers} of {_gib(trained * 4)} (FSDP)" if sharded else ""
    root_unit = trained - c.layers * c.lm_layer  # embeddings, final norm, output head, projectors and head
    frozen_lm = c.lm_total - c.lm_trained if config.lm.trainability != LMTrainability.FULL else 0
    tokens = tokens_per_record or _tokens_per_record(config, c)
    micro = max(1, math.ceil(config.optim.batch_size / workers / config.runtime.length_groups))
    per_token_layer = (50 * c.hidden + 10 * c.intermediate) * act_bytes / 2  # BYTES_PER_TOKEN_LAYER's bf16 figure, x2 in fp32
    micro_tokens = micro * tokens
    if config.lm.activation_checkpointing:  # each layer's input, and one layer recomputed with its backward's temporaries
        activations = micro_tokens * (c.layers * 2 * c.hidden * act_bytes + RECOMPUTED_LAYERS * per_token_layer)
    else:
        activations = micro_tokens * c.layers * per_token_layer
    logits = micro_tokens * c.vocabulary * (act_bytes + 4 + 4)  # the logits, their fp32 upcast and its gradient
    longest = max(c.n_und + TEXT_TOKENS["understanding"], c.n_gen + TEXT_TOKENS["generation"]) + ANSWER_TOKENS
    kv_cache = 2 * c.layers * EVAL_BATCH * longest * c.heads_kv_width * act_bytes
    bf16 = config.runtime.precision.value == "bf16"
    rows = [
        ("frozen weights", (frozen_lm + c.towers) * frozen_bytes + c.vq * 4,
         f"LM {_billions(frozen_lm)} + towers {_billions(c.towers)} in {frozen_dtype(config.runtime.precision)}"
         f"; VQ {_billions(c.vq)} fp32"),
        ("trained weights", trained * 4 / shards, f"LM {_billions(c.lm_trained)} ({config.lm.trainability.value}) + projectors, "
                                                  f"head, cell embeddings {_billions(c.adapters)}; fp32{share}"),
        ("gradients", trained * 4 / shards, "fp32" + (f"; 1/{workers}" if sharded else "")),
        ("optimizer states", trained * 8 / shards, "AdamW: 2 x fp32" + (f"; 1/{workers}" if sharded else "")),
        ("autocast weight copies", trained * 2 if bf16 else 0,
         ("bf16 casts of fp32 trained weights, kept from the forward for the backward" + (" (whole, not sharded)" if sharded else ""))
         if bf16 else "fp32: none"),
        ("DDP gradient buckets", trained * 4 if workers > 1 and not sharded else 0,
         "FSDP: none" if sharded else "one fp32 copy" if workers > 1 else "one worker: none"),
        ("FSDP gathered units", (root_unit + 2 * c.lm_layer) * 8 if sharded else 0,
         "the root and two decoder layers whole, weights and gradients in fp32" if sharded else "not sharded: none"),
        ("image working set", config.runtime.image_memory_gb * GiB, "runtime.image_memory_gb"),
        ("activations", activations + logits,
         f"{micro} records x {tokens} tokens a length group" + (", checkpointed" if config.lm.activation_checkpointing else "")),
        ("evaluation", kv_cache + (trained * 4 if sharded else 0),
         f"KV cache of {EVAL_BATCH} prompts x {longest} tokens" + (f", and the whole fp32 model gathered ({_gib(trained * 4)})"
                                                                  if sharded else "") + "; not alive with the activations"),
        ("overhead", OVERHEAD_GB * GiB, "CUDA context, NCCL, allocator slack"),
    ]
    rows_gb = tuple((name, value / GiB, detail) for name, value, detail in rows)
    by_name = {name: value for name, value, _ in rows_gb}
    apart = ("activations", "gradients", "evaluation")  # never all alive at once: the peak takes the largest
    peak = sum(v for name, v, _ in rows_gb if name not in apart) + max(by_name[name] for name in apart)
    steps = planned_steps(config)
    evaluations = len(evaluation_steps(config.eval, steps)) + 1
    tokens_per_step = config.optim.batch_size * tokens
    lm_flops = 2 * c.lm_total * tokens_per_step  # forward
    backward = 2 * (c.lm_trained + c.adapters) + 2 * c.lm_total  # weight gradients of what trains, input gradients throughout
    flops = lm_flops + backward * tokens_per_step + (lm_flops if config.lm.activation_checkpointing else 0)
    flops += 2 * c.towers * c.n_und * config.optim.batch_size
    train_seconds = steps * flops / (workers * accelerator.bf16_tflops * 1e12 * ASSUMED_MFU)
    weight_read = ((frozen_lm * frozen_bytes + c.lm_trained * 4) / (accelerator.bandwidth_tbs * 1e12))
    prompts = config.eval.max_eval_records
    batches = math.ceil(prompts / workers / EVAL_BATCH)
    eval_seconds = evaluations * batches * weight_read * (ANSWER_TOKENS + c.n_gen)
    hours = (train_seconds + eval_seconds) / 3600
    return Plan(config, accelerator, c, rows_gb, peak, micro, tokens, steps, evaluations, tokens_per_step, flops / 1e12,
                hours, hours * workers)


def fixes(config: TrainConfig, accelerator: Accelerator) -> list[tuple[str, float]]:
    """Changes that bring a plan that does not fit within the accelerator's memory: (what to set, peak GiB)."""
    tried = []
    if config.lm.trainability == LMTrainability.FULL:
        lora = {"trainability": LMTrainability.LORA}
        named = "lm.trainability=lora" + (" runtime.strategy=ddp" if config.runtime.strategy == Strategy.FSDP else "")
        tried.append((named, _with(config, lm=lora, runtime={"strategy": Strategy.DDP})))
        if config.runtime.num_workers > 1 and config.runtime.strategy != Strategy.FSDP:
            tried.append(("runtime.strategy=fsdp", _with(config, runtime={"strategy": Strategy.FSDP})))
    if not config.lm.activation_checkpointing:
        tried.append(("lm.activation_checkpointing=true", _with(config, lm={"activation_checkpointing": True})))
    batch = config.optim.batch_size
    while batch > config.runtime.num_workers:
        batch //= 2
        smaller = _with(config, optim={"batch_size": max(batch, config.runtime.num_workers)})
        if make_plan(smaller, accelerator).fits:
            tried.append((f"optim.batch_size={smaller.optim.batch_size}", smaller))
            break
    found = [(name, make_plan(changed, accelerator).peak_gb) for name, changed in tried]
    return [(name, peak) for name, peak in found if peak <= accelerator.memory_gb]


def render(plan: Plan) -> str:
    c, a, config = plan.counts, plan.accelerator, plan.config
    lines = [f"plan: {config.runtime.num_workers} worker(s) on {a.name} ({a.memory_gb:g} GiB, {a.bf16_tflops:g} bf16 TFLOP/s); "
             f"precision {config.runtime.precision.value}, LM {config.lm.trainability.value}",
             f"{'per worker':<24}{'GiB':>8}  detail"]
    lines += [f"{name:<24}{value:>8.2f}  {detail}" for name, value, detail in plan.rows]
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(f"{'peak':<24}{plan.peak_gb:>8.2f}  of {a.memory_gb:g}: {verdict}")
    lines.append(f"parameters: LM {_billions(c.lm_total)} ({_billions(c.lm_trained)} trained), towers {_billions(c.towers)}, "
                 f"VQ {_billions(c.vq)}, projectors and head {_billions(c.adapters)}; image tokens {c.n_und} in, {c.n_gen} out")
    lines.append(f"run: {plan.steps:,} steps x {plan.tokens_per_step:,} tokens ({config.optim.batch_size} records x ~{plan.tokens_per_record}), "
                 f"{plan.train_tflop_per_step:,.1f} TFLOP a step; {plan.evaluations} evaluations")
    lines.append(f"time: ~{plan.hours:.2f} h wall, ~{plan.gpu_hours:.1f} GPU-hours (training at {ASSUMED_MFU:.0%} MFU, assumed; "
                 f"evaluation as memory-bound decoding)")
    if c.assumed:
        lines.append("assumed (not on this machine): " + "; ".join(c.assumed))
    return "\n".join(lines)


# -- parts ---------------------------------------------------------------------------------------
def _meta_lm(config: TrainConfig):
    import transformers

    assumed: tuple[str, ...] = ()
    folder = Path(config.lm.pretrained_path) if config.lm.pretrained_path else None
    if folder is not None and (folder / "config.json").is_file():
        lm_config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    else:
        f = config.lm
        vocabulary = UNKNOWN_VOCABULARY if folder is not None else 64  # the word vocabulary of the smart-watch texts
        if folder is not None:
            assumed = (f"LM shape from lm.* fields ({f.hidden_size} wide, {f.num_layers} layers), vocabulary {vocabulary:,}",)
        lm_config = transformers.LlamaConfig(vocab_size=vocabulary, hidden_size=f.hidden_size, intermediate_size=f.intermediate_size,
                                             num_hidden_layers=f.num_layers, num_attention_heads=f.num_heads,
                                             num_key_value_heads=f.num_heads, tie_word_embeddings=False)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(lm_config), assumed


def _lora_parameters(lm, rank: int) -> int:
    from trainables.freezing import LORA_TARGETS

    return sum(rank * (m.in_features + m.out_features) for name, m in lm.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS)


def _tower_config(config: TrainConfig, path: str | None):
    import transformers

    u = config.understanding
    folder = Path(path) if path else None
    if folder is not None and (folder / "config.json").is_file():
        tower = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        return getattr(tower, "vision_config", tower), ()
    side = u.image_size or config.data.generate_image_size
    assumed = (f"vision tower from understanding.hidden_size ({u.hidden_size} wide, 2 layers)",) if folder is not None else ()
    return transformers.SiglipVisionConfig(hidden_size=u.hidden_size, intermediate_size=4 * u.hidden_size, num_hidden_layers=2,
                                           num_attention_heads=max(1, u.hidden_size // 32), image_size=side,
                                           patch_size=u.patch_size), assumed


def _towers(config: TrainConfig) -> tuple[int, int, int, tuple[str, ...]]:
    """Frozen tower parameters, understanding tokens per image and their width, assumptions (the vq encoder: 0s,
    its tokens are the VQ's)."""
    import transformers

    u = config.understanding
    if u.encoder == EncoderName.PATCH:
        side = u.image_size or config.data.generate_image_size
        return 0, (side // u.patch_size) ** 2, u.patch_size**2 * 3, ()
    if u.encoder == EncoderName.VQ:
        return 0, 0, 0, ()
    tower, assumed = _tower_config(config, u.pretrained_path)
    with torch.device("meta"):
        params = sum(p.numel() for p in transformers.SiglipVisionModel(tower).parameters())
    grid = tower.image_size // tower.patch_size
    return params, grid * grid + (1 if u.encoder == EncoderName.CLIP else 0), tower.hidden_size, assumed


def _discrete(config: TrainConfig) -> bool:
    g = config.generation
    return g.space == GenerationSpaceName.VQ or (g.space == GenerationSpaceName.SAME and config.understanding.encoder == EncoderName.VQ)


def _vq(config: TrainConfig, n_und: int) -> tuple[int, int, int, int, tuple[str, ...]]:
    """VQ parameters, generation tokens per image, codebook size, code width, assumptions."""
    g = config.generation
    if g.space in (GenerationSpaceName.SIGLIP, GenerationSpaceName.CLIP) or (g.space == GenerationSpaceName.SAME and not _discrete(config)):
        return 0, n_und, 0, 0, ()
    if g.space == GenerationSpaceName.PATCH:
        return 0, (g.image_size // g.patch_size) ** 2, 0, 0, ()
    if not g.vq_pretrained_path:  # the k-means codebook
        return g.codebook_size * g.patch_size**2 * 3, (g.image_size // g.patch_size) ** 2, g.codebook_size, g.patch_size**2 * 3, ()
    from trainables.llamagen import LlamaGenVQ

    path = Path(g.vq_pretrained_path)
    if path.is_file():
        from trainables.llamagen import load_llamagen_vq

        vq = load_llamagen_vq(path, g.image_size)
        assumed: tuple[str, ...] = ()
    else:
        with torch.device("meta"):  # LlamaGen's vq_ds16_c2i
            vq = LlamaGenVQ(ch=128, ch_mult=[1, 1, 2, 2, 4], blocks=2, z_channels=256, codebook_size=16384, dim=8, image_size=g.image_size)
        assumed = ("VQ of LlamaGen's vq_ds16_c2i shape",)
    return sum(p.numel() for p in vq.parameters()), vq.num_tokens, vq.codebook_size, vq.code_dim, assumed


def _projector(kind: ProjectorKind, d_in: int, d_out: int) -> int:
    first = d_in * d_out + d_out
    return first if kind == ProjectorKind.LINEAR else first + d_out * d_out + d_out


def _tokens_per_record(config: TrainConfig, c: Counts) -> int:
    """The padded length of a length group: the longer record kind the arm trains on."""
    understanding = 1 + c.n_und + TEXT_TOKENS["understanding"]
    generation = 1 + c.n_gen + TEXT_TOKENS["generation"]
    return {Arm.UNDERSTANDING: understanding, Arm.GENERATION: generation}.get(config.data.arm, max(understanding, generation))


def _with(config: TrainConfig, **sections: dict) -> TrainConfig:
    return config.model_copy(update={name: getattr(config, name).model_copy(update=values) for name, values in sections.items()})


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:.1f} GiB"


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.1f} M"

