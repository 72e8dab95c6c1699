"""A model is path x conditioner x codec: one Generator drives every combination (issue 16, item 3)."""
import pytest
import torch

from synth.codecs import PixelCodec
from synth.conditioners import ClassConditioner, NoConditioner
from synth.config import ConfigError
from synth.labels import Condition, LabelError, LabelSchema
from synth.paths.diffusion import DiffusionPath
from synth.paths.flow import FLOW
from synth.samplers.artifact import ArtifactError
from synth.samplers.generator import Generator, load_generator, model_parts

SCHEMA = LabelSchema(classes=["clean", "dim"], domains=["clean", "dim"])


def tiny_unet(num_class_embeds: int | None = None):
    """A 16 px UNet2DModel (with a class embedding of ``num_class_embeds`` rows, or none)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=num_class_embeds).eval()


def diffusion_path() -> DiffusionPath:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return DiffusionPath(torch.cumprod(1 - betas, 0).float(), "epsilon")


@pytest.mark.parametrize("path", ["flow", "diffusion"])
def test_an_unconditional_model_samples_on_either_path_and_refuses_guidance(path):
    gen = Generator(tiny_unet(), NoConditioner(), PixelCodec(1), FLOW if path == "flow" else diffusion_path(), 16)
    both = gen.sample([Condition()] * 2, [3, 4], steps=3, guidance=1.0, sampler="euler")
    assert both.images.shape == (2, 1, 16, 16) and both.images.dtype == torch.uint8
    one = gen.sample([Condition()], [4], steps=3, guidance=1.0, sampler="euler")
    assert torch.equal(one.images[0], both.images[1])  # image i depends on its seed alone
    assert not torch.equal(both.images[0], both.images[1])
    with pytest.raises(ConfigError, match="unconditional: use guidance 1"):
        gen.sample([Condition()], [0], steps=2, guidance=1.5)
    with pytest.raises(ConfigError, match="translation needs"):
        gen.translate(both.images, "a", "b")


def test_a_class_conditioned_diffusion_model_is_one_more_composition():
    """The class conditioner (with its null row) on the diffusion path: no trainer writes one today, but the
    generator needs nothing new to sample it, and guidance changes the image."""
    gen = Generator(tiny_unet(num_class_embeds=3), ClassConditioner(SCHEMA), PixelCodec(1), diffusion_path(), 16)
    conds = [Condition(label=0), Condition(domain="dim")]
    plain = gen.sample(conds, [1, 2], steps=3, guidance=1.0, sampler="dpmpp_2m")
    guided = gen.sample(conds, [1, 2], steps=3, guidance=3.0, sampler="dpmpp_2m")
    assert plain.conditions == conds and not torch.equal(plain.images, guided.images)
    with pytest.raises(LabelError, match="unknown domain 'ct'; this model's domains: clean, dim"):
        gen.sample([Condition(domain="ct")], [0], steps=2)
    with pytest.raises(LabelError, match="negative prompt needs a text-conditioned model"):
        gen.sample(conds, [1, 2], steps=2, guidance=2.0, negative_prompt="noise")


def test_translation_does_not_depend_on_the_chunk_size_even_without_seeds():
    """Per-image seeds default to the image's place in the whole batch, not in its chunk (a stochastic solver;
    chunks restarting at seed 0 would give images 1-3 the noise of image 0).  Within 1 grey level: CPU
    elementwise kernels round differently at different tensor sizes."""
    gen = Generator(tiny_unet(num_class_embeds=3), ClassConditioner(SCHEMA), PixelCodec(1), FLOW, 16)
    x = torch.randint(0, 256, (4, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    kw = dict(tau=0.5, steps=4, sampler="euler_ancestral", guidance=2.0)
    whole = gen.translate(x, "clean", "dim", **kw).int()
    restarted = gen.translate(x, "clean", "dim", seeds=[0, 0, 0, 0], **kw).int()
    gen.optimize(chunk_size=1)
    chunked = gen.translate(x, "clean", "dim", **kw).int()
    assert (chunked - whole).abs().max() <= 1 and (chunked != whole).float().mean() < 0.01
    assert (restarted - whole)[1:].abs().float().mean() > 5 * (chunked - whole).abs().float().mean() + 1


def test_each_conditioner_keeps_the_defaults_its_generator_class_had():
    """Bridges sampled 20 euler steps and translated at guidance 1; text models 25 dpmpp_2m steps, guidance 1.5."""
    gen = Generator(tiny_unet(num_class_embeds=3), ClassConditioner(SCHEMA), PixelCodec(1), FLOW, 16)
    c = [Condition(domain="dim")]
    assert torch.equal(gen.sample(c, [5], guidance=2.0).images, gen.sample(c, [5], steps=20, sampler="euler",
                                                                          guidance=2.0).images)
    assert gen.sample(c, [5]).settings["steps"] == 20 and gen.sample(c, [5]).settings["sampler"] == "euler"
    x = torch.full((1, 1, 16, 16), 90, dtype=torch.uint8)
    assert torch.equal(gen.translate(x, "clean", "dim", steps=4), gen.translate(x, "clean", "dim", steps=4, guidance=1.0))
    with pytest.raises(ConfigError, match="empty batch"):
        gen.translate(x[:0], "clean", "dim")


def test_the_parts_of_an_export_are_read_from_old_and_new_records():
    assert model_parts({"path": "p", "kind": "bridge", "codec": "vae"}) == ("flow", "class", "vae")
    assert model_parts({"path": "p", "codec": "pixel"}) == ("diffusion", "text", "pixel")  # the oldest exports
    assert model_parts({"path": "p", "kind": "ldm", "family": "flow", "conditioner": "text", "codec": "pixel"}) == (
        "flow", "text", "pixel")
    with pytest.raises(ArtifactError, match="conditioned on 'image'.*upgrade synth"):
        model_parts({"path": "p", "kind": "ldm", "family": "flow", "conditioner": "image", "codec": "pixel"})
    with pytest.raises(ArtifactError, match="'sde' model family"):
        model_parts({"path": "p", "family": "sde", "codec": "pixel"})


def test_one_generator_class_loads_every_export(tiny_export):
    gen = load_generator(tiny_export)
    assert type(gen) is Generator and gen.conditioner.name == "text" and not gen.is_flow
    assert gen.text_embeddings(["a"]).shape[0] == 1  # the conditioner's members read as the generator's
    assert gen.prediction_type == "epsilon" and gen.alphas_cumprod.shape == (1000,)  # the path's
    settings = gen.sample([gen.schema.condition(0)], [0], steps=2).settings
    assert (settings["sampler"], settings["steps"]) == ("dpmpp_2m", 2)
    with pytest.raises(AttributeError, match="'Generator' object has no attribute 'encode'"):
        gen.encode  # only the conditioner's reading members are forwarded
    with pytest.raises(AttributeError, match="a text-conditioned generator has no 'null_domain'"):
        gen.null_domain
