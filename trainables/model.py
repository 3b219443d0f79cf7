"""The unified vision-language model of docs/STUDY.md ("The model"), LLaVA-style.

One causal LM reads and writes images:

  understanding   image -> encoder (frozen) -> standardise -> affine_u -> projector -> LM input embeddings,
                  then the question; the LM answers in text.
  generation      prompt -> LM -> after <boi>, one image token per position: head(hidden) is
                  the next token (codebook logits, or a feature vector), and the ground-truth
                  token goes back in through the generation projector (teacher forcing).
                  <boi> and each image token also get a learned embedding of the grid cell
                  they predict next (generation.image_positions).

  loss = text CE (answers only) + alpha * image loss (cosine | mse | ce)

Shapes: B batch, T sequence, H LM width, Nu/Du understanding tokens/width,
Ng/Dg generation tokens/width, K codebook size, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables.affine import AffineMap
from trainables.config import AffineTarget, ImageLoss, LMTrainability, ProjectorKind, TrainConfig
from trainables.encoders import build_encoder
from trainables.errors import UserError
from trainables.losses import image_loss, text_loss
from trainables.precision import frozen_dtype
from trainables.sequences import Batch
from trainables.spaces import Target, build_space
from trainables.tokenizer import TextTokenizer


def projector(kind: ProjectorKind, d_in: int, d_out: int) -> nn.Module:
    if kind == ProjectorKind.LINEAR:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))  # mlp2x_gelu


def build_lm(config: TrainConfig, tok: TextTokenizer) -> nn.Module:
    """A tiny random Llama from the lm.* fields, or a local pretrained causal LM, in the dtype the precision
    policy gives it: float32 when it trains in full, else the frozen dtype (never the checkpoint's own)."""
    import transformers

    lm_config = config.lm
    dtype = torch.float32 if lm_config.trainability == LMTrainability.FULL else frozen_dtype(config.runtime.precision)
    if lm_config.pretrained_path is None:
        llama = transformers.LlamaConfig(
            vocab_size=tok.vocab_size,
            hidden_size=lm_config.hidden_size,
            intermediate_size=lm_config.intermediate_size,
            num_hidden_layers=lm_config.num_layers,
            num_attention_heads=lm_config.num_heads,
            num_key_value_heads=lm_config.num_heads,
            max_position_embeddings=lm_config.max_positions,
            tie_word_embeddings=False,  # transformers 5 ties by default; the paper's LMs do not
            pad_token_id=tok.pad,
            bos_token_id=tok.bos,
            eos_token_id=tok.eos,
        )
        return transformers.LlamaForCausalLM(llama).to(dtype)
    folder = Path(lm_config.pretrained_path)
    if not (folder / "config.json").is_file():
        raise UserError(f"lm.pretrained_path {str(folder)!r} has no config.json (expected a saved causal LM)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise UserError(f"lm.pretrained_path {str(folder)!r} has no weights (*.safetensors or *.bin)")
    lm = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    if lm.get_input_embeddings().num_embeddings < tok.vocab_size:
        lm.resize_token_embeddings(tok.vocab_size)  # the study's special tokens were added (their rows train: freezing.py)
    return lm


@dataclass
class Generated:
    features: torch.Tensor  # (B, Ng, Dg) in the space's own (un-misaligned) coordinates
    codes: torch.Tensor | None  # (B, Ng) for a discrete space


class UnifiedVLM(nn.Module):
    def __init__(self, config: TrainConfig, tok: TextTokenizer, lm: nn.Module, encoder: nn.Module, space: nn.Module):
        super().__init__()
        self.tok = tok
        self.lm, self.encoder, self.space = lm, encoder, space
        H = lm.config.hidden_size
        Du, Dg = encoder.feature_dim, space.feature_dim
        s, seed = config.alignment.affine_strength, 1_000_003 * config.seed + config.alignment.affine_seed
        on_und = config.alignment.affine_target == AffineTarget.UNDERSTANDING
        self.affine_u = AffineMap(Du, s if on_und else 0.0, seed)  # misaligns the input space ...
        self.affine_g = AffineMap(Dg, 0.0 if on_und else s, seed)  # ... or the output space
        self.projector = projector(config.understanding.projector, Du, H)  # (.., Du) -> (.., H)
        self.gen_projector = projector(config.generation.projector, Dg, H)  # (.., Dg) -> (.., H)
        self.head = nn.Linear(H, space.codebook_size if space.discrete else Dg)  # (.., H) -> (.., K | Dg)
        # Which grid cell comes next, added to the input that predicts it: a 2-layer LM finds its
        # place in the image from RoPE alone only slowly, and the attributes live in fixed cells
        # (the corners). Row k is added at <boi> (k = 0) and at image token k-1.
        self.gen_positions = nn.Embedding(space.num_tokens, H) if config.generation.image_positions else None  # (Ng, H)
        if self.gen_positions is not None:
            nn.init.normal_(self.gen_positions.weight, std=0.02)
        self.loss_kind, self.alpha = config.generation.loss, config.generation.alpha
        self.temperature = config.generation.temperature  # discrete decoding: 0 = argmax, else sampling
        # Centre and typical norm of the (misaligned) training targets: the cosine loss compares
        # centred vectors and fixes only their direction, so decoding rescales to the typical norm.
        self.register_buffer("gen_centre", torch.zeros(Dg))
        self.register_buffer("gen_norm", torch.ones(()))
        # Mean and scale of the training images' understanding features: standardised features
        # vary around 0 instead of sharing one large component (raw pixel patches are mostly
        # white background), which the LM otherwise fails to read within the budget.
        self.register_buffer("und_mean", torch.zeros(Du))
        self.register_buffer("und_scale", torch.ones(()))
        # The factor on the generation projector's output (generation.input_scale; None: set by fit_stats).
        self.input_scale = config.generation.input_scale
        self.register_buffer("gen_input_scale", torch.ones(()))

    # -- pieces -------------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        return self.lm.get_decoder()

    def train(self, mode: bool = True) -> UnifiedVLM:
        super().train(mode)
        self.encoder.eval()  # frozen towers stay in eval mode
        self.space.eval()
        return self

    @torch.no_grad()
    def fit_stats(self, images: torch.Tensor) -> Target:
        """images (N, 3, H, W) float: a sample of training images; sets und_mean/und_scale, gen_centre/gen_norm
        and gen_input_scale. -> the sample's tokens in the generation space (its `encode`), for whoever needs them next."""
        features = self.encoder(images).reshape(-1, self.und_mean.shape[0])  # (N*Nu, Du)
        self.und_mean.copy_(features.mean(0))
        self.und_scale.copy_((features - self.und_mean).std().clamp(min=1e-6))
        tokens = self.space.encode(images)
        target = self.affine_g(tokens.features).reshape(-1, self.gen_centre.shape[0])
        self.gen_centre.copy_(target.mean(0))
        self.gen_norm.copy_((target - self.gen_centre).norm(dim=-1).mean())
        if self.input_scale is not None:
            self.gen_input_scale.fill_(self.input_scale)
        else:  # image tokens at the scale of words: raw code vectors projected are ~20x larger, and a small LM
            # then reads image positions as their content alone, slow to fetch the prompt's words there
            # (docs/MEASUREMENTS.md, "Generation").
            # Measured on the space's own tokens, before any misalignment: every affine strength of a seed gets
            # the same factor, so the map stays the only difference between them (finding 2).
            words = self.lm.get_input_embeddings().weight.norm(dim=-1).mean()
            own = tokens.features.reshape(-1, self.gen_centre.shape[0])
            self.gen_input_scale.copy_(words / self.gen_projector(own).norm(dim=-1).mean().clamp(min=1e-6))
        return tokens

    def understanding_embeds(self, images: torch.Tensor) -> torch.Tensor:  # (Bu, 3, H, W) -> (Bu, Nu, H)
        with torch.no_grad():
            features = (self.encoder(images) - self.und_mean) / self.und_scale  # (Bu, Nu, Du), standardised
        return self.projector(self.affine_u(features))

    def generation_inputs(self, features: torch.Tensor) -> torch.Tensor:  # (.., Dg) -> (.., H)
        """Generation-space tokens as the LM reads them (teacher-forced or fed back)."""
        return self.gen_projector(features) * self.gen_input_scale

    def target_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forcing inputs (Bg, Ng, Dg) and targets: features (Bg, Ng, Dg) or codes (Bg, Ng)."""
        with torch.no_grad():
            target = self.space.encode(images)
            features = self.affine_g(target.features)  # for a discrete space: misaligned code vectors
        return features, target.codes

    def next_cell(self, k: int | None, rows: int) -> torch.Tensor | int:
        """The embedding of grid cell k for `rows` rows (B, H), or 0 without image positions (or k = None: all cells, (rows*Ng, H))."""
        if self.gen_positions is None:
            return 0
        table = self.gen_positions.weight  # (Ng, H)
        return table.repeat(rows, 1) if k is None else table[k].expand(rows, -1)

    def embed(self, input_ids: torch.Tensor, und_mask: torch.Tensor, und_images: torch.Tensor,
              gen_mask: torch.Tensor | None = None, gen_features: torch.Tensor | None = None,
              gen_pred_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image features written over the placeholders, and the next cell's
        embedding added where an image token is predicted. -> (B, T, H)"""
        embeds = self.lm.get_input_embeddings()(input_ids).clone()  # (B, T, H); clone: written in place below
        n_tokens, n_images = int(und_mask.sum()), und_images.shape[0]
        if n_tokens != n_images * self.encoder.num_tokens:
            raise ValueError(
                f"Image features and image tokens do not match: tokens: {n_tokens}, features: "
                f"{n_images} images x {self.encoder.num_tokens} tokens"
            )
        if n_images:
            feats = self.understanding_embeds(und_images)  # (Bu, Nu, H)
            embeds[und_mask] = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
        if gen_mask is not None and gen_features is not None and gen_features.shape[0]:
            n_gen = int(gen_mask.sum())
            if n_gen != gen_features.shape[0] * gen_features.shape[1]:
                raise ValueError(
                    f"Generated image tokens and features do not match: tokens: {n_gen}, features: "
                    f"{gen_features.shape[0]} images x {gen_features.shape[1]} tokens"
                )
            g = self.generation_inputs(gen_features)  # (Bg, Ng, H)
            embeds[gen_mask] = g.reshape(-1, g.shape[-1]).to(embeds.dtype)
        if gen_pred_mask is not None and self.gen_positions is not None and gen_pred_mask.any():
            cells = torch.zeros_like(embeds)  # (B, T, H); rows of Ng predicting positions, in order
            cells[gen_pred_mask] = self.next_cell(None, int(gen_pred_mask.sum()) // self.space.num_tokens).to(embeds.dtype)
            embeds = embeds + cells
        return embeds

    # -- training -----------------------------------------------------------------------------
    def teacher_forced_hidden(self, batch: Batch, gen_features: torch.Tensor) -> torch.Tensor:
        """The backbone's last hidden states (B, T, H) over whole sequences, the image cells fed `gen_features` (Bg, Ng, Dg)."""
        embeds = self.embed(batch.input_ids, batch.und_mask, batch.und_images, batch.gen_mask, gen_features, batch.gen_pred_mask)
        return self.backbone(inputs_embeds=embeds, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss sums and counts of one batch (the loop normalises them by global counts)."""
        gen_features, gen_codes = self.target_tokens(batch.gen_images)  # (Bg, Ng, Dg), (Bg, Ng)
        hidden = self.teacher_forced_hidden(batch, gen_features)  # (B, T, H)
        text_sum, text_count = text_loss(self.lm.get_output_embeddings(), hidden, batch.labels)
        predicted = self.head(hidden[batch.gen_pred_mask])  # (Bg*Ng, K | Dg)
        target = gen_codes.reshape(-1) if self.space.discrete else gen_features.reshape(-1, gen_features.shape[-1])
        centre = self.gen_centre if self.loss_kind == ImageLoss.COSINE else None
        image_sum, image_count = image_loss(self.loss_kind, predicted, target, centre)
        return {"text_sum": text_sum, "text_count": text_count, "image_sum": image_sum, "image_count": image_count}

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def forced_head(self, batch: Batch, fed: torch.Tensor) -> torch.Tensor:
        """Teacher forcing, as in training: the head's output at every image cell of generation sequences,
        given the prompt and `fed` (Bg, Ng, Dg), the tokens of the cells before it. -> (Bg, Ng, K | Dg)"""
        hidden = self.teacher_forced_hidden(batch, fed)
        return self.head(hidden[batch.gen_pred_mask]).reshape(fed.shape[0], self.space.num_tokens, -1)

    def forced_codes(self, batch: Batch) -> torch.Tensor:
        """Each cell's argmax code after the true codes of the cells before it (discrete spaces). -> (Bg, Ng)"""
        return self.forced_head(batch, self.target_tokens(batch.gen_images)[0]).argmax(-1)

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, und_images: torch.Tensor,
                 last_extra: torch.Tensor | int = 0):
        """Left-padded prompts -> (last hidden (B, H), cache, attention mask, next positions (B, 1)).
        `last_extra` (B, H) is added to the last token's embedding (<boi>: the first cell's)."""
        from transformers import DynamicCache

        und_mask = input_ids == self.tok.image
        embeds = self.embed(input_ids, und_mask, und_images)  # (B, T, H)
        if not isinstance(last_extra, int):
            embeds[:, -1] = embeds[:, -1] + last_extra.to(embeds.dtype)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at 0
        cache = DynamicCache(config=self.lm.config)
        out = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions,
                            cache=cache, use_cache=True)
        return out.last_hidden_state[:, -1], cache, attention_mask, positions[:, -1:] + 1

    def _step(self, embeds: torch.Tensor, cache, attention_mask: torch.Tensor, positions: torch.Tensor):
        """One new token per row (B, 1, H) through the cached LM."""
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], 1)
        out = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions,
                            cache=cache, use_cache=True)
        return out.last_hidden_state[:, -1], attention_mask, positions + 1

    @torch.no_grad()
    def generate_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, und_images: torch.Tensor,
                      max_new_tokens: int) -> list[list[int]]:
        """Greedy answers of left-padded prompts (ending in <assistant>), KV-cached. -> ids per row, <eos> cut."""
        h, cache, mask, pos = self._prefill(input_ids, attention_mask, und_images)
        B = input_ids.shape[0]
        out = torch.full((B, max_new_tokens), self.tok.eos, dtype=torch.long, device=input_ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            next_id = self.lm.get_output_embeddings()(h).argmax(-1)  # (B,)
            next_id = torch.where(done, torch.full_like(next_id, self.tok.eos), next_id)
            out[:, i] = next_id
            done |= next_id == self.tok.eos
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            e = self.lm.get_input_embeddings()(next_id)[:, None]  # (B, 1, H)
            h, mask, pos = self._step(e, cache, mask, pos)
        answers = []
        for row in out.tolist():
            answers.append(row[: row.index(self.tok.eos)] if self.tok.eos in row else row)
        return answers

    def to_space(self, predicted: torch.Tensor) -> torch.Tensor:
        """Head output (.., Dg) of a continuous space -> a feature vector in the (misaligned) space."""
        if self.loss_kind != ImageLoss.COSINE:
            return predicted
        direction = F.normalize(predicted - self.gen_centre, dim=-1)
        return self.gen_centre + direction * self.gen_norm

    @torch.no_grad()
    def generate_image(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Generated:
        """Free-running image tokens after left-padded prompts ending in <boi>: each prediction is fed back."""
        empty = torch.zeros((0, 3, 1, 1), device=input_ids.device)
        B = input_ids.shape[0]
        h, cache, mask, pos = self._prefill(input_ids, attention_mask, empty, self.next_cell(0, B))
        features, codes = [], []
        sampler = torch.Generator(input_ids.device).manual_seed(0)  # the same draws at every evaluation
        for i in range(self.space.num_tokens):
            y = self.head(h)  # (B, K | Dg)
            if self.space.discrete:
                if self.temperature > 0:
                    probs = torch.softmax(y.float() / self.temperature, -1)  # (B, K)
                    code = torch.multinomial(probs, 1, generator=sampler)[:, 0]  # (B,)
                else:
                    code = y.argmax(-1)  # (B,)
                codes.append(code)
                x = self.affine_g(self.space.code_vectors(code[:, None]))[:, 0]  # (B, Dg)
            else:
                x = self.to_space(y.float()).to(y.dtype)  # (B, Dg)
            features.append(x)
            if i < self.space.num_tokens - 1:
                e = self.generation_inputs(x) + self.next_cell(i + 1, B)  # (B, H): token i, predicting cell i+1
                h, mask, pos = self._step(e[:, None], cache, mask, pos)
        feats = self.affine_g.inverse(torch.stack(features, 1).float())  # (B, Ng, Dg), back to the space's own coordinates
        return Generated(feats, torch.stack(codes, 1) if codes else None)

    def decode_images(self, generated: Generated) -> torch.Tensor | None:
        """(B, 3, S, S) pictures of generated tokens, or None for a space without a decoder."""
        if not self.space.decodable:
            return None
        return self.space.decode(generated.codes if self.space.discrete else generated.features)


def build_model(config: TrainConfig, tok: TextTokenizer, data_image_size: int, vq: nn.Module | None = None) -> UnifiedVLM:
    """LM + understanding encoder + generation space, with projectors and head. Seeded by config.seed."""
    torch.manual_seed(config.seed)
    towers = frozen_dtype(config.runtime.precision)
    encoder = build_encoder(config.understanding, data_image_size, vq, towers)
    space = build_space(config.generation, config.understanding, encoder, data_image_size, vq, towers)
    lm = build_lm(config, tok)
    return UnifiedVLM(config, tok, lm, encoder, space)
