import pytest
import torch

from synth.samplers.generator import ArtifactError, SampleBatch, load_generator, read_artifact
from synth.labels import Condition
from synth.seeds import image_seed


def test_batch_size_invariance(tiny_export):
    """Image i depends only on its seed and condition: batch sizes 1, 7 and 64 agree."""
    g = load_generator(tiny_export)
    n = 64
    conds = [g.schema.condition(i % 2) for i in range(n)]
    seeds = [image_seed(7, i) for i in range(n)]
    full = g.sample(conds, seeds, steps=5, guidance=2.0).images
    assert full.shape == (n, 1, 16, 16) and full.dtype == torch.uint8
    for bs in (1, 7):
        parts = [g.sample(conds[i:i + bs], seeds[i:i + bs], steps=5, guidance=2.0).images for i in range(0, 14, bs)]
        got = torch.cat(parts)[:14]
        assert (got.int() - full[:14].int()).abs().max() <= 1


def test_seeds_and_conditions_matter(tiny_export):
    g = load_generator(tiny_export)
    a = g.sample([g.schema.condition(0)] * 2, [1, 2], steps=4)
    b = g.sample([g.schema.condition(0)] * 2, [1, 2], steps=4)
    assert isinstance(a, SampleBatch) and torch.equal(a.images, b.images)
    assert not torch.equal(a.images[0], a.images[1])
    assert a.conditions[0].prompt == g.schema.prompt_for(0) and a.seeds == [1, 2]
    assert a.settings["steps"] == 4 and a.settings["sampler"] == "dpmpp_2m"
    with pytest.raises(ValueError, match="one seed per image"):
        g.sample([g.schema.condition(0)], [1, 2])


def test_stable_diffusion_pipeline_parity(tiny_export):
    """Our DPM-Solver++(2M) and DDIM equal diffusers' schedulers on the exported model."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    g = load_generator(tiny_export)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_export, vae=None, safety_checker=None, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    seeds = [3, 4]
    conds = [g.schema.condition(0), g.schema.condition(1)]
    noise = g.initial_noise(seeds)

    def run(steps):
        out = pipe([c.prompt for c in conds], height=16 * 8, width=16 * 8, num_inference_steps=steps, guidance_scale=1.5,
                   latents=noise.clone(), output_type="latent").images
        return ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    ours = g.sample(conds, seeds, steps=8, guidance=1.5, sampler="dpmpp_2m").images
    assert (ours.int() - run(8).int()).abs().max() <= 1
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading", set_alpha_to_one=True,
                                               steps_offset=0)
    g.spacing = "leading"
    ours = g.sample(conds, seeds, steps=8, guidance=1.5, sampler="ddim").images
    assert (ours.int() - run(8).int()).abs().max() <= 1


def test_bad_model_folders(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        read_artifact(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"not a synth export \(missing synth.json, model_index.json, unet\)"):
        read_artifact(tmp_path / "empty")


def test_run_folder_resolves_to_export(tiny_export):
    assert read_artifact(tiny_export.parent)["path"] == str(tiny_export)


def test_bad_model_paths_are_one_line(tiny_export, tmp_path):
    """A file instead of a folder, and a run folder that has no export yet (see test_artifact_safety for damage)."""
    with pytest.raises(ArtifactError, match=r"synth.json' is a file, not a model folder; pass its folder"):
        read_artifact(tiny_export / "synth.json")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"stage": "bridge"}')
    with pytest.raises(ArtifactError, match=r"is a run folder of 'synth train bridge' without an export"):
        load_generator(tmp_path / "run")


def test_loaded_generator_carries_the_verified_hash(tiny_export):
    import json

    meta = json.loads((tiny_export / "synth.json").read_text())
    g = load_generator(tiny_export)
    assert g.weights_sha256 == meta["weights_sha256"] and set(meta["weights_files"]) >= {"unet/diffusion_pytorch_model.safetensors"}


def test_every_solver_samples_the_ldm_and_a_batch_is_batch_size_free(tiny_export):
    """Each file of synth.solvers drives the LDM; image i does not depend on what shares its batch."""
    from synth import solvers

    g = load_generator(tiny_export)
    conds = [Condition(label=k % 2) for k in range(3)]
    for name in solvers.names():
        b = g.sample(conds, [5, 6, 7], steps=4, sampler=name)
        one = g.sample(conds[1:2], [6], steps=4, sampler=name)
        assert b.images.shape[0] == 3 and b.settings["model_evals"] == solvers.model_evals(name, 4)
        assert torch.equal(b.images[1:2], one.images), name
