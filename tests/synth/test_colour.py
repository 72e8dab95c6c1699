"""Colour stays colour: data.channels (auto | 1 | 3) through loading, training, export, sampling, writing,
translation and mixing; grey stays grey; RGBA drops alpha with a note; 2-channel and mixed sets are refused."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from synth.config import ConfigError
from synth.data import DataError, load_image_folder, load_npz, load_split, stack_images
from tests.conftest import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")
COLOUR = ["data.name=phantom-colour", "data.phantom_items=32"]


def _rgb(seed: int, size: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_stack_images_auto_grey_colour_and_forced():
    grey, colour = np.full((4, 4), 9, np.uint8), _rgb(0, 4)
    assert stack_images([grey, grey], ["a", "b"]).shape == (2, 1, 4, 4)
    assert stack_images([colour, colour], ["a", "b"]).shape == (2, 3, 4, 4)
    with pytest.raises(DataError, match=r"mixes grey and colour images \(grey: 'g.png', colour: 'c.png'\).*data.channels=3"):
        stack_images([colour, grey], ["c.png", "g.png"])
    both3 = stack_images([colour, grey], ["c", "g"], channels=3)
    assert both3.shape == (2, 3, 4, 4) and torch.equal(both3[1, 0], both3[1, 2]) and int(both3[1, 0, 0, 0]) == 9
    both1 = stack_images([colour, grey], ["c", "g"], channels=1)
    want = np.round(0.299 * colour[..., 0] + 0.587 * colour[..., 1] + 0.114 * colour[..., 2])
    assert both1.shape == (2, 1, 4, 4) and np.abs(both1[0, 0].numpy().astype(int) - want).max() <= 1


def _folder(root, files: dict):
    for rel, arr_mode in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        arr, mode = arr_mode
        Image.fromarray(arr, mode=mode).save(root / rel)
    return root


def test_folder_rgb_stays_colour_and_equal_channel_rgb_is_grey(tmp_path):
    colour = _folder(tmp_path / "c", {f"{k}/{i}.png": (_rgb(i + 10 * k), "RGB") for k in (0, 1) for i in range(3)})
    s = load_image_folder(colour, "train", 12, "raise", None)
    assert s.channels == 3 and s.images.shape == (6, 3, 12, 12)
    x = np.asarray(Image.open(colour / "1" / "2.png"))
    assert np.array_equal(s.images[5].permute(1, 2, 0).numpy(), x)  # same size: pixels untouched
    grey_rgb = np.repeat(np.arange(144, dtype=np.uint8).reshape(12, 12)[..., None], 3, 2)  # an X-ray saved as RGB
    g = load_image_folder(_folder(tmp_path / "g", {"a/x.png": (grey_rgb, "RGB"), "b/y.png": (grey_rgb, "RGB")}),
                          "train", 12, "raise", None)
    assert g.channels == 1 and torch.equal(g.images[0, 0], torch.from_numpy(grey_rgb[..., 0]))


def test_mixed_folder_names_a_file_of_each_kind_and_channels_resolves_it(tmp_path):
    root = _folder(tmp_path, {"a/grey.png": (np.zeros((12, 12), np.uint8), "L"), "b/colour.png": (_rgb(1), "RGB")})
    with pytest.raises(DataError, match=r"grey: '.*grey.png', colour: '.*colour.png'"):
        load_image_folder(root, "train", 12, "raise", None)
    assert load_image_folder(root, "train", 12, "raise", None, channels=3).channels == 3
    assert load_image_folder(root, "train", 12, "raise", None, channels=1).channels == 1
    from synth.samplers.translate import load_input  # translation has no data.channels: its fix is another one

    with pytest.raises(DataError, match=r"grey: '.*grey.png', colour: '.*colour.png'\); --input must hold one kind"):
        load_input(str(root), 12)


def test_rgba_drops_alpha_with_a_note_and_two_channels_are_refused(tmp_path):
    rgba = np.dstack([_rgb(2), np.full((12, 12), 128, np.uint8)])
    s = load_image_folder(_folder(tmp_path / "r", {"a/x.png": (rgba, "RGBA"), "b/y.png": (rgba, "RGBA")}),
                          "train", 12, "raise", None)
    assert s.channels == 3 and any("alpha channel was dropped" in n and "2 RGBA" in n for n in s.notes)
    assert np.array_equal(s.images[0].permute(1, 2, 0).numpy(), rgba[..., :3])
    la = np.dstack([np.zeros((12, 12), np.uint8), np.full((12, 12), 255, np.uint8)])
    with pytest.raises(DataError, match=r"x.png.*2-channel image"):
        load_image_folder(_folder(tmp_path / "la", {"a/x.png": (la, "LA"), "b/y.png": (la, "LA")}), "train", 12,
                          "raise", None)
    Image.new("CMYK", (12, 12)).save(tmp_path / "k.jpg")
    (tmp_path / "cmyk" / "a").mkdir(parents=True)
    (tmp_path / "k.jpg").rename(tmp_path / "cmyk" / "a" / "k.jpg")
    with pytest.raises(DataError, match=r"k.jpg.*CMYK"):
        load_image_folder(tmp_path / "cmyk", "train", 12, "raise", None)


def test_npz_colour_rgba_and_two_channel(tmp_path):
    imgs = np.stack([_rgb(i) for i in range(4)])
    np.savez(tmp_path / "c.npz", train_images=imgs, train_labels=np.arange(4)[:, None] % 2)
    assert load_npz(tmp_path / "c.npz", "train", 12, None).images.shape == (4, 3, 12, 12)
    np.savez(tmp_path / "a.npz", train_images=np.concatenate([imgs, imgs[..., :1]], -1), train_labels=np.zeros((4, 1)))
    s = load_npz(tmp_path / "a.npz", "train", 12, None)
    assert s.channels == 3 and s.notes and "alpha" in s.notes[0]
    np.savez(tmp_path / "two.npz", train_images=imgs[..., :2], train_labels=np.zeros((4, 1)))
    with pytest.raises(DataError, match=r"shape \(4, 12, 12, 2\) \(2 channels"):
        load_npz(tmp_path / "two.npz", "train", 12, None)


def test_config_channels_choices():
    assert tiny_cfg("data.channels=3").data.channels == 3
    with pytest.raises(ConfigError, match=r"data.channels: 2 is not one of auto, 1, 3"):
        tiny_cfg("data.channels=2")
    assert load_split(tiny_cfg(*COLOUR).data).channels == 3
    assert load_split(tiny_cfg(*COLOUR, "data.channels=1").data).channels == 1
    assert load_split(tiny_cfg("data.channels=3").data).channels == 3  # the grey phantom, repeated


# ---------------------------------------------------------------------------
# A colour model end to end


@pytest.fixture(scope="module")
def colour_export(tmp_path_factory):
    from synth.trainers.ldm import train_ldm

    run = tmp_path_factory.mktemp("colour-ldm")
    return train_ldm(tiny_cfg(*COLOUR, "train.steps=4"), run, log=lambda *a: None)


def test_colour_export_samples_and_writes_rgb(colour_export, tmp_path):
    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.samplers.generator import load_generator

    meta = json.loads((colour_export / "synth.json").read_text())
    assert meta["channels"] == 3
    g = load_generator(colour_export)
    b = g.sample([g.schema.condition(0), g.schema.condition(1)], seeds=[0, 1], steps=3)
    assert b.images.shape == (2, 3, 16, 16)
    req = BulkRequest(model=str(colour_export), out=str(tmp_path / "set"), n=6,
                      spec=parse_label_spec("healthy=0.5,lesion=0.5", g.schema, log=lambda *a: None), steps=3,
                      shard_size=4, batch_size=2)
    res = run_bulk(req, g, progress=False)
    assert res.manifest["channels"] == 3
    pngs = sorted((tmp_path / "set").rglob("*.png"))
    assert len(pngs) == 6 and all(Image.open(p).mode == "RGB" for p in pngs)
    from synth.samplers.bulk import condition_for
    from synth.seeds import image_seed

    one = g.sample([condition_for(0, req.spec, g.schema)], [image_seed(req.seed, 0)], steps=3, guidance=req.guidance,
                   sampler=req.sampler).images[0]
    assert np.array_equal(np.asarray(Image.open(pngs[0])), one.permute(1, 2, 0).numpy())  # the PNG is the sample


def test_colour_resume_equals_uninterrupted(tmp_path):
    from tests.trainers.test_ldm import _final_state
    from synth.trainers.ldm import train_ldm

    train_ldm(tiny_cfg(*COLOUR, "train.steps=4"), tmp_path / "a", log=lambda *a: None)
    train_ldm(tiny_cfg(*COLOUR, "train.steps=2"), tmp_path / "b", log=lambda *a: None)
    train_ldm(tiny_cfg(*COLOUR, "train.steps=4"), tmp_path / "b", log=lambda *a: None)
    a, b = _final_state(tmp_path / "a", 4), _final_state(tmp_path / "b", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_colour_pipeline_parity(colour_export):
    """The RGB export is a diffusers pipeline whose output our sampler reproduces."""
    from diffusers import StableDiffusionPipeline

    from synth.samplers.generator import load_generator

    g = load_generator(colour_export)
    pipe = StableDiffusionPipeline.from_pretrained(colour_export, vae=None, safety_checker=None, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    conds, seeds = [g.schema.condition(0), g.schema.condition(1)], [3, 4]
    out = pipe([c.prompt for c in conds], height=16 * 8, width=16 * 8, num_inference_steps=6, guidance_scale=1.5,
               latents=g.initial_noise(seeds).clone(), output_type="latent").images
    theirs = ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    ours = g.sample(conds, seeds, steps=6, guidance=1.5, sampler="dpmpp_2m").images
    assert ours.shape == theirs.shape == (2, 3, 16, 16) and (ours.int() - theirs.int()).abs().max() <= 1


def test_colour_autoencoder_and_latent_model(tmp_path):
    from synth.samplers.generator import load_generator
    from synth.trainers.autoencoder import train_autoencoder
    from synth.trainers.ldm import train_ldm

    ae = train_autoencoder(tiny_cfg(*COLOUR, "train.steps=2"), tmp_path / "ae", log=lambda *a: None)
    from diffusers import AutoencoderKL

    assert AutoencoderKL.from_pretrained(ae / "vae", use_safetensors=True).config.in_channels == 3
    export = train_ldm(tiny_cfg(*COLOUR, "train.steps=2", "model.codec=vae", f"model.autoencoder={tmp_path / 'ae'}",
                                "train.force=true"), tmp_path / "ldm", log=lambda *a: None)
    g = load_generator(export)
    assert g.sample([g.schema.condition(1)], seeds=[0], steps=2).images.shape == (1, 3, 16, 16)
    # a grey autoencoder cannot carry colour: refused with the fix
    grey_ae = train_autoencoder(tiny_cfg("train.steps=1"), tmp_path / "grey-ae", log=lambda *a: None)
    with pytest.raises(ConfigError, match=r"takes 1-channel images but the data is colour.*data.channels=1"):
        train_ldm(tiny_cfg(*COLOUR, "train.steps=1", "model.codec=vae", f"model.autoencoder={grey_ae.parent}"),
                  tmp_path / "ldm2", log=lambda *a: None)


def test_translation_and_mixing_refuse_the_other_channel_count(colour_export, tmp_path):
    from synth.samplers.bulk import BulkError, BulkRequest, parse_label_spec, run_bulk
    from synth.samplers.generator import load_generator
    from synth.samplers.translate import TranslateRequest, check_translate
    from synth.augment import AugmentError, mix
    from synth.data import phantom_set

    class ColourBridge:
        channels = 3

    grey = phantom_set(4, 16, 0, "train")
    with pytest.raises(BulkError, match=r"translates colour \(3-channel\) images but --input .* grey \(1-channel\)"):
        check_translate(TranslateRequest(model="m", out="o", n=4, spec=None, input="in.npz"), ColourBridge(), grey)

    g = load_generator(colour_export)
    run_bulk(BulkRequest(model=str(colour_export), out=str(tmp_path / "set"), n=4, steps=2, shard_size=4, batch_size=4,
                         spec=parse_label_spec("healthy=0.5,lesion=0.5", g.schema, log=lambda *a: None)), g,
             progress=False)

    class GreyReal(torch.utils.data.Dataset):
        classes = ["healthy", "lesion"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return grey.images[i].float() / 255, int(grey.labels[i])

    with pytest.raises(AugmentError, match=r"real images have 1 channel\(s\) but the synthetic set .* has 3"):
        mix(GreyReal(), tmp_path / "set", 0.5)


def test_classifier_round_trip_keeps_its_channels(tmp_path):
    from synth.classifier import SmallCNN, load_classifier, save_classifier

    m = SmallCNN(2, (8, 8), in_channels=3)
    save_classifier(m, tmp_path / "c.safetensors", ["a", "b"])
    back, _, _ = load_classifier(tmp_path / "c.safetensors")
    assert back.in_channels == 3 and back(torch.zeros(1, 3, 16, 16)).shape == (1, 2)


def test_real_kermany_rgb_jpegs_are_grey(tmp_path):
    """The pediatric chest X-rays are RGB JPEGs with equal channels: under auto they load as one channel."""
    import shutil

    from tests.conftest import KERMANY, need

    root = need(KERMANY)
    for cls in ("NORMAL", "PNEUMONIA"):
        (tmp_path / cls).mkdir()
        for f in sorted((root / "test" / cls).glob("*.jpeg"))[:3]:
            shutil.copy(f, tmp_path / cls / f.name)
    assert Image.open(next((tmp_path / "NORMAL").iterdir())).mode == "RGB"
    s = load_image_folder(tmp_path, "train", 64, "raise", None)
    assert s.channels == 1 and len(s) == 6


def test_jpeg_chroma_noise_still_counts_as_grey():
    from synth.data import channel_layout

    grey = np.random.default_rng(0).integers(10, 240, (8, 8), dtype=np.uint8)
    noisy = np.dstack([grey, np.clip(grey.astype(int) + 1, 0, 255), np.clip(grey.astype(int) - 2, 0, 255)]).astype(np.uint8)
    assert channel_layout(noisy).ndim == 2
    assert channel_layout(_rgb(3, 8)).ndim == 3


def test_grid_with_more_classes_than_fit_wraps_into_columns():
    from synth.io import labelled_grid

    x = torch.full((40 * 2, 3, 16, 16), 90, dtype=torch.uint8)
    tall = labelled_grid(x, 2, [f"class {i}" for i in range(40)], "40 classes", max_rows=16)
    one = labelled_grid(x[:2], 2, ["class 0"], "one class")
    assert tall.ndim == 3 and tall.shape[2] == 3  # colour stays colour
    assert tall.shape[0] < 17 * (one.shape[0] - 24) + 24  # 16 rows high, not 40
    assert tall.shape[1] > 2.5 * (one.shape[1] - 12)  # three columns of rows side by side


def test_a_colour_marker_on_an_xray_keeps_it_grey_and_colour_fidelity_features_work():
    from synth.classifier import SmallCNN
    from synth.data import channel_layout
    from synth.metrics import FeatureNet

    xray = np.repeat(np.random.default_rng(1).integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, 2)
    xray[2:5, 2:5] = (255, 0, 0)  # a red burned-in marker: 9 of 4096 pixels
    assert channel_layout(xray).ndim == 2
    f = FeatureNet(SmallCNN(2, (8, 8), in_channels=3))
    assert f(torch.zeros(2, 3, 16, 16, dtype=torch.uint8)).shape == (2, 8)
    assert f(torch.zeros(2, 1, 16, 16, dtype=torch.uint8)).shape == (2, 8)  # grey repeated for an RGB model


def test_a_run_recorded_before_data_channels_existed_still_resumes(tmp_path):
    import json as _json

    from synth.trainers.ldm import train_ldm

    train_ldm(tiny_cfg("train.steps=2"), tmp_path, log=lambda *a: None)
    meta = _json.loads((tmp_path / "run.json").read_text())
    del meta["config"]["data"]["channels"]  # as an older synth wrote it
    (tmp_path / "run.json").write_text(_json.dumps(meta))
    train_ldm(tiny_cfg("train.steps=4"), tmp_path, log=lambda *a: None)
    assert (tmp_path / "checkpoints" / "step-00000004").is_dir()


def test_fidelity_refuses_a_colour_set_against_grey_real_data(colour_export, tmp_path):
    """Before any feature net is trained: the set's channel count against the real data's, with the fix."""
    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.samplers.generator import load_generator
    from synth.evaluation.fidelity_cli import fidelity_cli
    from synth.evaluation.real import EvalError

    g = load_generator(colour_export)
    run_bulk(BulkRequest(model=str(colour_export), out=str(tmp_path / "set"), n=4, steps=2, shard_size=4, batch_size=4,
                         spec=parse_label_spec("healthy=0.5,lesion=0.5", g.schema, log=lambda *a: None)), g,
             progress=False)
    with pytest.raises(EvalError, match=r"holds colour \(3-channel\) images but --data phantom gives grey \(1-channel\) "
                                        r"ones; .* or pass --set data.channels=3"):
        fidelity_cli(str(tmp_path / "set"), "phantom", None, None, None, ["data.phantom_items=32"], None)
    assert not list(tmp_path.glob("features-*"))
