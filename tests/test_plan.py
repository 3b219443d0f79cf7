"""`uvlm plan` and `uvlm rehearse`: paper scale planned before it runs, and rehearsed at tiny shapes through Ray Train."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from trainables.accelerators import ACCELERATORS
from trainables.config import config_path, load_config
from trainables.plan import count_parameters, fixes, make_plan

H100 = ACCELERATORS["h100-80gb"]


def run_uvlm(*args: str, tmp_path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = os.environ | {"UVLM_WORKDIR": str(tmp_path / "work"), "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(["uvlm", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("preset", ["paper-vicuna7b-siglip-llamagen", "paper-vicuna7b-siglip-same"])
def test_the_paper_presets_fit_an_80gb_gpu_per_worker(preset, tmp_path):
    done = run_uvlm("plan", preset, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    for row in ("frozen weights", "trained weights", "gradients", "optimizer states", "activations", "evaluation"):
        assert row in done.stdout
    assert "of 80: fits" in done.stdout and "GPU-hours" in done.stdout and "10 evaluations" in done.stdout


def test_a_7b_full_fine_tune_under_ddp_is_refused_with_the_fix(tmp_path):
    done = run_uvlm("plan", "paper-vicuna7b-siglip-llamagen", "--set", "lm.trainability=full", tmp_path=tmp_path)
    assert done.returncode == 2 and "DOES NOT FIT" in done.stdout
    assert len(done.stderr.strip().splitlines()) == 1
    assert "lm.trainability=lora" in done.stderr and "runtime.strategy=fsdp" in done.stderr


def test_a_7b_full_fine_tune_sharded_over_8_workers_fits():
    config = load_config(config_path("paper-vicuna7b-siglip-llamagen"), {"lm.trainability": "full", "runtime.strategy": "fsdp"})
    plan = make_plan(config, H100)
    rows = {name: gb for name, gb, _ in plan.rows}
    ddp = {name: gb for name, gb, _ in make_plan(config.with_overrides({"runtime.strategy": "ddp"}), H100).rows}
    assert plan.fits and config.runtime.num_workers == 8
    for row in ("trained weights", "gradients", "optimizer states"):
        assert rows[row] == pytest.approx(ddp[row] / 8)
    assert rows["DDP gradient buckets"] == 0 < ddp["DDP gradient buckets"]
    assert rows["evaluation"] > ddp["trained weights"]  # evaluation gathers the whole fp32 model on every worker


def test_sharding_is_refused_for_a_lora_run():
    from trainables.errors import UserError

    with pytest.raises(UserError, match="runtime.strategy 'fsdp' shards a full fine-tune.*use runtime.strategy 'ddp'"):
        load_config(config_path("paper-vicuna7b-siglip-llamagen"), {"runtime.strategy": "fsdp"})


def test_the_lm_is_counted_exactly_on_the_meta_device():
    config = load_config(config_path("paper-vicuna7b-siglip-llamagen"))
    counts = count_parameters(config)
    assert counts.lm_total == 6_738_415_616  # Llama-2-7B / Vicuna-7B: hidden 4096, 32 layers, MLP 11008, vocabulary 32,000
    assert 300e6 < counts.lm_trained < 330e6  # LoRA r=128 on the seven projections of 32 layers: 319.8 M


def test_fixes_are_only_changes_that_fit():
    config = load_config(config_path("paper-vicuna7b-siglip-llamagen"), {"lm.trainability": "full"})
    assert not make_plan(config, H100).fits
    found = dict(fixes(config, H100))
    assert {"lm.trainability=lora", "runtime.strategy=fsdp"} <= set(found) and all(peak <= 80 for peak in found.values())
    assert "lm.activation_checkpointing=true" not in found  # 7B fp32 states alone exceed 80 GiB


def test_activation_checkpointing_shrinks_the_planned_activations():
    config = load_config(config_path("paper-vicuna7b-siglip-llamagen"))
    plain = dict((name, gb) for name, gb, _ in make_plan(config, H100).rows)
    checkpointed = dict((name, gb) for name, gb, _ in make_plan(config.with_overrides({"lm.activation_checkpointing": True}), H100).rows)
    assert checkpointed["activations"] < plain["activations"] / 4


def test_activation_checkpointing_gives_the_same_gradients():
    import transformers

    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                                                                num_hidden_layers=2, num_attention_heads=2))
    ids = torch.randint(0, 40, (2, 9))
    grads = []
    for checkpointing in (False, True):
        lm.zero_grad()
        if checkpointing:
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        lm.train()
        lm(input_ids=ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in lm.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_rehearse_refuses_a_config_that_cannot_fit_before_any_compute(tmp_path):
    done = run_uvlm("rehearse", "paper-vicuna7b-siglip-llamagen", "--set", "lm.trainability=full", tmp_path=tmp_path)
    assert done.returncode == 2 and not (tmp_path / "work" / "rehearsal").exists()


@pytest.mark.parametrize("preset", ["paper-vicuna7b-siglip-llamagen",
                                    pytest.param("paper-vicuna7b-siglip-same", marks=pytest.mark.slow)])  # CI runs both
def test_rehearse_runs_a_paper_preset_on_stand_ins_through_ray_train(preset, tmp_path):
    """A new user's first paper-scale step: float16 stand-ins, 2 gloo workers, 24 steps, evaluations, a failure and a resume."""
    done = run_uvlm("rehearse", preset, tmp_path=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    assert "saved float16; tokenizer files: tokenizer.model)" in out
    assert ("(keys: args, model, steps)" in out) == ("llamagen" in preset)  # the LlamaGen VQ's checkpoint, where one is used
    assert "resumed from the checkpoint of step 8" in out and "evaluations at steps 8, 16, 24" in out
    assert "2 workers, gloo" in out and "all finite: True" in out and "rehearsal passed" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_rehearse_a_sharded_7b_full_fine_tune(tmp_path):
    """The path a 7B full fine-tune takes: planned to fit on 8 workers with FSDP, rehearsed on the float16 LM
    stand-in with 2 gloo workers, sharded, through a failure and a resume from the gathered checkpoint."""
    done = run_uvlm("rehearse", "paper-vicuna7b-siglip-llamagen", "--set", "lm.trainability=full",
                    "--set", "runtime.strategy=fsdp", tmp_path=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    assert "of 80: fits" in out and "1/8 of" in out and "saved float16" in out
    assert "2 workers, gloo, FSDP" in out and "resumed from the checkpoint of step 8" in out
    assert "all finite: True" in out and "rehearsal passed" in out
