"""Prompts longer than the text encoder's window (``model.text.windows``).

A CLIP-style encoder sees ``L`` tokens (77 for Stable Diffusion, ``model.text.max_length`` for a scratch one);
radiology captions and reports are often longer.  With ``windows = W > 1`` a prompt's tokens are cut into up to W
pieces of ``L - 2`` tokens, each wrapped in start/end tokens and padded to ``L``, encoded separately, and the
hidden states are concatenated along the sequence axis: cross-attention then reads ``W x L`` positions (the
long-prompt technique of community Stable Diffusion tools).  A prompt with fewer pieces fills the rest with the
encoding of the empty prompt, so the null prompt is padded the same way and every prompt has the same length.
``W = 1`` is plain truncation: the first window is exactly what ``tokenizer(truncation=True)`` gives.
"""
from __future__ import annotations

from typing import Sequence

import torch


def window_ids(tokenizer, prompts: Sequence[str], max_length: int, windows: int) -> tuple[torch.Tensor, int]:
    """Token ids (P, W, L) of ``prompts`` cut into ``windows`` windows of ``max_length``, and how many prompts were
    still cut (longer than W x (L - 2) tokens)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    body = max_length - 2
    rows, cut = [], 0
    for ids in tokenizer(list(prompts), add_special_tokens=False, truncation=False, verbose=False).input_ids:
        cut += len(ids) > windows * body
        pieces = [ids[i:i + body] for i in range(0, min(len(ids), windows * body), body)] or [[]]
        pieces += [[]] * (windows - len(pieces))  # empty windows: the encoding of the empty prompt
        rows.append([[bos] + p + [eos] + [pad] * (body - len(p)) for p in pieces])
    return torch.tensor(rows, dtype=torch.long), cut


def encode_windows(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    """(B, L) or (B, W, L) token ids -> (B, W x L, D) hidden states, each window encoded on its own."""
    if ids.dim() == 2:
        return text_encoder(ids)[0]
    b, w, length = ids.shape
    hidden = text_encoder(ids.reshape(b * w, length))[0]
    return hidden.reshape(b, w * length, hidden.shape[-1])


__all__ = ["window_ids", "encode_windows"]
