"""A small in-domain image-text contrastive model (CLIP, trained offline on the real training split) and the
scores ``synth eval text`` reads from it: caption similarity and R-precision (the right caption ranked first
among ``k``).  Nothing is downloaded: the tokenizer is a BPE learned from the training captions, the image
tower is :class:`synth.classifier.SmallCNN`, the text tower a two-layer transformer."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from synth.classifier import SmallCNN
from synth.io import to_float

CLIP_MAX_LENGTH = 77


class CaptionTower(nn.Module):
    """Token ids (B, L) and mask (B, L) -> (B, dim) unit vectors: embeddings + transformer, mean over real tokens."""

    def __init__(self, vocab_size: int, width: int = 128, layers: int = 2, heads: int = 4,
                 max_length: int = CLIP_MAX_LENGTH, dim: int = 128):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Parameter(torch.zeros(max_length, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.1, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.proj = nn.Linear(width, dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.tokens(ids) + self.positions[: ids.shape[1]]
        h = self.body(h, src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).float()
        return F.normalize(self.proj((h * m).sum(1) / m.sum(1).clamp(min=1)), dim=-1)


class SmallCLIP(nn.Module):
    """Image tower (uint8 (B, C, H, W) -> (B, dim)) and caption tower, both unit-normalised, with a learned
    temperature; ~0.7M parameters at the defaults."""

    def __init__(self, vocab_size: int, in_channels: int = 1, dim: int = 128):
        super().__init__()
        self.image = SmallCNN(dim, in_channels=in_channels)
        self.text = CaptionTower(vocab_size, dim=dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """float images (B, C, H, W) in [-1, 1] -> (B, dim)."""
        return F.normalize(self.image(x), dim=-1)


def tokenize(tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> ids (N, L) and a boolean mask (N, L), cut at the tokenizer's length (L <= 77)."""
    enc = tokenizer(list(captions), padding="longest", truncation=True, max_length=CLIP_MAX_LENGTH,
                    return_tensors="pt")
    return enc.input_ids, enc.attention_mask.bool()


def same_caption_targets(captions: list[str]) -> torch.Tensor:
    """(B, B) row-normalised targets: every image of a caption is a positive of every copy of that caption
    (the images of one clinical case often share one caption; they are not each other's negatives)."""
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    g = torch.tensor([ids[c] for c in captions])
    t = (g[:, None] == g[None, :]).float()
    return t / t.sum(1, keepdim=True)


def train_clip(images: torch.Tensor, captions: list[str], *, steps: int = 1500, batch_size: int = 128,
               lr: float = 1e-3, seed: int = 0, log=None) -> tuple[SmallCLIP, object]:
    """Fit a :class:`SmallCLIP` on uint8 images (N, C, H, W) and their captions (N,); returns it (eval mode) and
    its tokenizer (a BPE of 2,000 tokens learned from ``captions``)."""
    from synth.models import build_tokenizer
    from synth.seeds import step_generator
    from synth.trainers.classifier import random_shift
    from synth.trainers.common import batch_indices

    tok = build_tokenizer(captions, 2000, CLIP_MAX_LENGTH)
    ids, mask = tokenize(tok, captions)
    torch.manual_seed(seed)
    model = SmallCLIP(len(tok), images.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = batch_indices(step, len(images), min(batch_size, len(images)), seed)
        x = random_shift(to_float(images[idx]), 3, step_generator(seed, step, stream=98))
        img, txt = model.embed_images(x), model.text(ids[idx], mask[idx])
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        target = same_caption_targets([captions[i] for i in idx.tolist()])
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 250 == 0:
            log(f"text judge (CLIP) step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)")
    return model.eval().requires_grad_(False), tok


@torch.no_grad()
def embed_captions(model: SmallCLIP, tokenizer, captions: list[str], batch: int = 256) -> torch.Tensor:
    """Captions (N,) -> (N, dim) unit vectors."""
    out = []
    for i in range(0, len(captions), batch):
        ids, mask = tokenize(tokenizer, captions[i:i + batch])
        out.append(model.text(ids, mask))
    return torch.cat(out) if out else torch.zeros(0, model.text.proj.out_features)


@torch.no_grad()
def embed_images(model: SmallCLIP, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> (N, dim) unit vectors."""
    return torch.cat([model.embed_images(to_float(images[i:i + batch])) for i in range(0, len(images), batch)])


def caption_key(text: str) -> str:
    """A caption as compared for sameness: lowercased, whitespace runs collapsed ('' for no text)."""
    return " ".join(text.lower().split())


def distractors(captions: list[str], k: int, seed: int) -> list[list[int] | None]:
    """For each row i, ``k - 1`` other rows (seeded, row i's own draw) holding ``k - 1`` *distinct* caption
    texts, each different from row i's (compared lowercased, whitespace-collapsed): the candidates R-precision
    ranks row i's caption against.  Two candidates with one text would make the task easier than 1 in k.
    A row without caption text gets None (it is not ranked) and is never a candidate."""
    norm = [caption_key(c) for c in captions]
    first: dict[str, int] = {}
    for j, c in enumerate(norm):
        if c:
            first.setdefault(c, j)  # one row stands for each distinct text
    texts = list(first.items())
    rows: list[list[int] | None] = []
    for i, c in enumerate(norm):
        if not c:
            rows.append(None)
            continue
        others = [j for t, j in texts if t != c]
        if len(others) < k - 1:
            raise ValueError(f"R-precision among {k} needs {k - 1} captions that differ from row {i}'s; the rows "
                             f"hold only {len(texts)} distinct caption(s); pass more rows or a smaller k")
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        pick = torch.randperm(len(others), generator=g)[: k - 1]
        rows.append([others[j] for j in pick.tolist()])
    return rows


def r_precision(image_emb: torch.Tensor, caption_emb: torch.Tensor, rows: list[int],
                candidates: list[list[int] | None]) -> dict:
    """image_emb (M, D) of M images, each of test row ``rows[m]``; caption_emb (N, D) of the N test captions;
    ``candidates[i]``: row i's distractor rows (None: row i has no caption and is skipped).  -> R-precision@1
    (own caption strictly most similar among 1 + len(distractors)) and the mean cosine similarity of each image
    to its own caption; ``hits`` (M,): 1/0 per image, NaN where skipped."""
    hits, sims, per_image = [], [], []
    for m, i in enumerate(rows):
        if candidates[i] is None:
            per_image.append(float("nan"))
            continue
        own = float(image_emb[m] @ caption_emb[i])
        other = (caption_emb[candidates[i]] @ image_emb[m]).max().item()
        hits.append(own > other)
        sims.append(own)
        per_image.append(float(own > other))
    n = len(hits)
    sizes = [len(c) for c in candidates if c is not None]
    return {"r_precision": sum(hits) / n if n else float("nan"), "similarity": sum(sims) / n if n else float("nan"),
            "n": n, "k": 1 + (sizes[0] if sizes else 0), "hits": torch.tensor(per_image)}


CLIP_FILES = {"clip.safetensors", "tokenizer", "clip.json"}  # everything save_clip writes


def save_clip(model: SmallCLIP, tokenizer, folder: Path, record: dict) -> None:
    """Weights (safetensors), tokenizer and the record that says what they were trained on, into ``folder``:
    written beside it and moved into place in one step, so a crash leaves the old folder or the new one."""
    import shutil

    from safetensors.torch import save_file

    from synth.io import atomic_replace_dir, atomic_write_text, fresh_tmp_dir, fsync_tree

    folder = Path(folder)
    tmp = fresh_tmp_dir(folder)
    tokenizer.save_pretrained(tmp / "tokenizer")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "clip.safetensors"))
    atomic_write_text(tmp / "clip.json", json.dumps({**record, "vocab_size": len(tokenizer),
                                                     "in_channels": model.image.in_channels}, indent=1))
    fsync_tree(tmp)
    if folder.is_dir() and not (folder / "clip.json").exists() and {p.name for p in folder.iterdir()} <= CLIP_FILES:
        shutil.rmtree(folder)  # an unfinished text judge of an older version (killed before its clip.json)
    atomic_replace_dir(tmp, folder, marker="clip.json")


def load_clip(folder: Path, record: dict) -> tuple[SmallCLIP, object] | None:
    """The CLIP saved in ``folder`` when its record matches ``record``; None otherwise (missing, damaged, stale)."""
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    try:
        saved = json.loads((Path(folder) / "clip.json").read_text())
        if any(saved.get(k) != v for k, v in record.items()):
            return None
        model = SmallCLIP(saved["vocab_size"], saved["in_channels"])
        model.load_state_dict(load_file(str(Path(folder) / "clip.safetensors")))
        return model.eval().requires_grad_(False), CLIPTokenizer.from_pretrained(Path(folder) / "tokenizer")
    except Exception:  # noqa: BLE001 - any damage (truncated json, bad header, odd tokenizer) means retrain
        return None
