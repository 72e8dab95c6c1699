"""Long prompts (issue 18 item 2): windows of the encoder's length, concatenated; W = 1 is plain truncation."""
import json

import torch

from synth.models import build_text_encoder, build_tokenizer
from synth.textwindows import encode_windows, window_ids
from tests.conftest import tiny_cfg

LONG = "a " + " ".join(f"opacity{k % 7} in the left lower lobe" for k in range(12))


def _tok():
    return build_tokenizer(["opacity in the left lower lobe", "normal chest", LONG], vocab_size=900, model_max_length=12)


def test_one_window_is_exactly_truncation():
    tok = _tok()
    prompts = ["normal chest", LONG, ""]
    ids, cut = window_ids(tok, prompts, 12, 1)
    ref = tok(prompts, padding="max_length", max_length=12, truncation=True, return_tensors="pt").input_ids
    lengths = [len(x) for x in tok(prompts, add_special_tokens=False).input_ids]
    assert torch.equal(ids[:, 0], ref) and cut == sum(n > 10 for n in lengths) >= 1


def test_windows_carry_the_rest_and_pad_with_the_empty_prompt():
    tok = _tok()
    ids, cut = window_ids(tok, ["chest", LONG, ""], 12, 4)
    assert ids.shape == (3, 4, 12)
    empty = window_ids(tok, [""], 12, 1)[0][0, 0]
    assert all(torch.equal(ids[0, w], empty) for w in (1, 2, 3)) and all(torch.equal(ids[2, w], empty) for w in range(4))
    n_tokens = len(tok(LONG, add_special_tokens=False).input_ids)
    assert not torch.equal(ids[1, 1], empty)  # the long prompt goes on into its second window
    assert cut == int(n_tokens > 4 * 10)
    te = build_text_encoder(len(tok), 32, 1, 2, 12)
    hidden = encode_windows(te, ids)
    assert hidden.shape == (3, 48, 32)
    assert torch.allclose(hidden[1, 12:24], te(ids[1:2, 1])[0][0], atol=1e-6)  # each window encoded on its own


def test_a_model_trained_with_windows_samples_with_them(tmp_path):
    from synth.samplers.generator import load_generator
    from synth.trainers.ldm import train_ldm
    from tests.synth.test_captions import _captioned

    man = _captioned(tmp_path, long_every=2)
    said = []
    export = train_ldm(tiny_cfg(f"data.name={man}", "model.text.windows=3", "train.steps=1"), tmp_path / "r",
                       log=said.append)
    meta = json.loads((export / "synth.json").read_text())
    assert meta["text_windows"] == 3
    assert any("3 windows of 12 tokens" in s for s in said)
    g = load_generator(export)
    assert g.windows == 3 and g.text_embeddings(["x", LONG]).shape[1] == 36
    assert g.sample([g.schema.condition(0, LONG)], [0], steps=2, guidance=2.0).images.shape == (1, 1, 16, 16)
