"""LoRA fine-tuning (issue 18 item 4): few trainable parameters, exact resume, adapters in diffusers' format that
plain diffusers loads onto the base model and that reproduce the merged export."""
import json

import pytest
import torch

from synth.config import ConfigError
from synth.trainers.common import params_hash
from synth.trainers.ldm import train_ldm
from tests.conftest import tiny_cfg
from tests.trainers.test_pretrained_and_autoencoder import tiny_sd  # noqa: F401  (fixture)

pytest.importorskip("peft")
LORA = ["model.codec=vae", "train.force=true", "train.lora_rank=4", "train.lr=1e-2", "train.ema_decay=0",
        "train.lr_schedule=constant", "train.checkpoint_every=2", "model.text.max_length=12"]


def test_lora_trains_few_parameters_resumes_and_loads_in_diffusers(tiny_sd, tmp_path):  # noqa: F811
    from diffusers import StableDiffusionPipeline

    from synth.samplers.generator import load_generator

    said = []
    base = [f"model.pretrained={tiny_sd}", *LORA, "train.text_lr=1e-3", "train.lora_text_encoder=true"]
    export = train_ldm(tiny_cfg(*base, "train.steps=4"), tmp_path / "a", log=said.append)
    line = next(s for s in said if s.startswith("LoRA rank 4"))
    share = float(line.rsplit("(", 1)[1].split("%")[0])
    assert share <= 5.0, line
    assert (export / "lora" / "pytorch_lora_weights.safetensors").is_file()
    # exact resume: 2 steps, then the same run extended to 4
    train_ldm(tiny_cfg(*base, "train.steps=2"), tmp_path / "b", log=lambda *a: None)
    resumed = train_ldm(tiny_cfg(*base, "train.steps=4"), tmp_path / "b", log=lambda *a: None)
    ours, again = load_generator(export), load_generator(resumed)
    assert params_hash({"u": ours.unet, "t": ours.text_encoder}) == params_hash({"u": again.unet, "t": again.text_encoder})
    # plain diffusers: base model + adapters == the merged export
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, use_safetensors=True)
    pipe.load_lora_weights(str(export / "lora"))
    pipe.fuse_lora()
    merged_unet = {k: v for k, v in ours.unet.state_dict().items()}
    fused = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    assert max(float((fused[k] - merged_unet[k]).abs().max()) for k in merged_unet) < 1e-5
    base_unet = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, use_safetensors=True).unet
    assert any(not torch.equal(base_unet.state_dict()[k], merged_unet[k]) for k in merged_unet)  # it learned
    # our sampler on diffusers' fused model: the same images within 1 grey level
    cond = [ours.schema.condition(0)] * 2
    mine = ours.sample(cond, [0, 1], steps=3, guidance=2.0).images
    ours.unet.load_state_dict(fused)
    te = {k.replace(".base_layer", ""): v for k, v in pipe.text_encoder.state_dict().items() if "lora_" not in k}
    ours.text_encoder.load_state_dict(te, strict=False)
    ours.clear_cache()
    theirs = ours.sample(cond, [0, 1], steps=3, guidance=2.0).images
    assert int((mine.int() - theirs.int()).abs().max()) <= 1


def test_lora_bad_inputs_are_one_line(tiny_sd, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match=r"train.lora_rank must be > 0"):
        tiny_cfg("train.lora_rank=0")
    with pytest.raises(ConfigError, match=r"train.lora_rank must be > 0"):
        tiny_cfg("train.lora_rank=-2")
    with pytest.raises(ConfigError, match=r"no attention layers to adapt"):
        train_ldm(tiny_cfg("train.lora_rank=4", "model.unet.attention_levels=[false,false]", "train.steps=1"),
                  tmp_path / "x", log=lambda *a: None)
    with pytest.raises(ConfigError, match=r"train.lora_text_encoder=true .* set train.text_lr"):
        train_ldm(tiny_cfg(f"model.pretrained={tiny_sd}", *LORA, "train.lora_text_encoder=true", "train.steps=1"),
                  tmp_path / "y", log=lambda *a: None)
