import torch

from synth.codecs import PixelCodec, VAECodec
from synth.models import build_text_encoder, build_tokenizer, build_unet, build_vae


def test_offline_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer(["chest x-ray, normal", "chest x-ray, pneumonia"], vocab_size=600, model_max_length=12)
    ids = tok(["chest x-ray, pneumonia", "anything else 123!"], padding="max_length", max_length=12, truncation=True).input_ids
    assert len(ids[0]) == 12 and ids[0][0] == tok.bos_token_id
    assert len([i for i in ids[0] if i != tok.pad_token_id]) < 8  # the corpus prompt is a few merged tokens
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("chest x-ray, normal").input_ids == tok("chest x-ray, normal").input_ids
    assert again.model_max_length == 12


def test_shapes():
    tok = build_tokenizer(["a b"], vocab_size=600)
    te = build_text_encoder(len(tok), 32, 1, 2, 12)
    ids = tok(["a b"], padding="max_length", max_length=12, return_tensors="pt").input_ids
    emb = te(ids)[0]
    assert emb.shape == (1, 12, 32)
    unet = build_unet(16, 1, [16, 32], 1, 8, 32, 8, [False, True])
    assert unet(torch.randn(2, 1, 16, 16), torch.tensor([1, 500]), encoder_hidden_states=emb.expand(2, -1, -1)).sample.shape == (2, 1, 16, 16)


def test_codecs():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(PixelCodec().decode(PixelCodec().encode(x)), x)
    vae = build_vae(1, [16, 16], 1, 4, 8, 16)
    vae.register_to_config(scaling_factor=0.5)
    c = VAECodec(vae)
    assert c.latent_shape(16) == (4, 8, 8)
    m, s = c.encode_moments(x)
    assert m.shape == (2, 4, 8, 8)
    assert torch.allclose(m, vae.encode(x).latent_dist.mean * 0.5)  # the scale comes from the config
    assert c.decode(m).shape == (2, 1, 16, 16)
    rgb = VAECodec(build_vae(3, [16, 16], 1, 4, 8, 16))  # grey image through an RGB autoencoder
    assert rgb.decode(rgb.encode(x)).shape == (2, 1, 16, 16)


def test_labelled_grid_has_title_band_row_labels_and_keeps_grey():
    import numpy as np
    import torch

    from synth.io import labelled_grid, make_grid

    x = torch.full((4, 1, 16, 16), 200, dtype=torch.uint8)
    plain = make_grid(x, nrow=2)
    g = labelled_grid(x, 2, ["normal", "pneumonia"], "a title long enough to be wider than two small images")
    assert g.ndim == 2 and g.dtype == np.uint8  # grey stays grey
    assert g.shape[0] > plain.shape[0] * 4 - 1 and g.shape[1] > plain.shape[1]
    assert (g[:20] < 100).any()  # text in the title band
    assert (g[30:, :40] < 100).any()  # row labels on the left
    rgb = labelled_grid(torch.full((2, 3, 16, 16), 200, dtype=torch.uint8), 2, ["a"], "t")
    assert rgb.ndim == 3 and rgb.shape[-1] == 3  # colour stays colour
