"""Writing a set, orchestrated once: device, dtype, deterministic kernels, batch size, the compile rule, the
output checks before the model loads, then the bulk engine.  ``synth sample`` / ``synth translate``, the
Python API and ``synth eval`` all call :func:`sample_set` / :func:`translate_set`."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from synth.config import ConfigError
from synth.labels import LabelSchema
from synth.messages import MAX_PROMPT_CHARS, prompt_problem
from synth.samplers.bulk import (BulkRequest, BulkResult, ConditionSpec, _legacy_label_order, check_out, check_request, deterministic_kernels, dist_info,
                                 parse_label_spec, parse_prompt_file, run_bulk)
from synth.sampleset.conditions import parse_prompt_manifest
from synth.samplers.generator import ArtifactError, load_generator, read_artifact

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def batch_size_arg(value, out: str | Path) -> int | None:
    """``--batch-size``: a positive int, or None for 'auto' (unless the set records one: reuse it)."""
    if str(value).strip().lower() == "auto":
        rec = Path(out) / ".synth" / "request.json"
        if rec.is_file():
            try:
                recorded = json.loads(rec.read_text()).get("batch_size")
            except (OSError, ValueError):
                recorded = None
            if isinstance(recorded, int) and recorded > 0:
                return recorded
        return None
    try:
        bs = int(value)
    except ValueError:
        raise ConfigError(f"--batch-size must be a positive integer or 'auto', got '{value}'") from None
    if bs <= 0:
        raise ConfigError(f"--batch-size must be a positive integer or 'auto', got {bs}")
    return bs


def prepare_device(device: str | None, dtype: str) -> str:
    """The device to run on (``None``: cuda when available, per local rank), checked against ``dtype``, with
    deterministic kernels set before any model loads (cuBLAS reads its workspace setting at first use)."""
    from synth.devices import resolve_device

    dev = str(resolve_device(device))
    if dtype == "float16" and not dev.startswith("cuda"):
        raise ConfigError("--dtype float16 needs a CUDA device; use bfloat16 or float32 on CPU")
    deterministic_kernels(dev)
    return dev


def _check_out_first(req, meta: dict, dev: str, out, batch_size_known: bool) -> None:
    """Refusals about ``out`` before the (long) model load; rank 0 decides for all."""
    check_request(req)
    if dist_info()[0] == 0:
        check_out(out, req.identity(meta, LabelSchema.from_json(meta["labels"]), dev), req, batch_size_known)


def sample_set(model: str | Path, out: str | Path, n: int, *, labels: "str | ConditionSpec | None" = None, prompts_file: str | None = None,
               guidance: float | None = None, steps: int | None = None, sampler: str | None = None,
               batch_size="auto", seed: int = 0, fmt: str = "imagefolder", shard_size: int = 1000,
               dtype: str = "float32", compile: bool | None = None, channels_last: bool = False, chunk_size: int = 0,
               attention: str = "sdpa", device: str | None = None, overwrite: bool = False, shrink: bool = False,
               allow_pickle: bool = False, progress: bool = True, log: Callable[[str], None] = print,
               negative_prompt: str = "", prompts_split: str = "all") -> BulkResult:
    """``n`` labelled images of the export ``model`` into ``out`` (resumes or extends what is there)."""
    from synth.samplers.generator import auto_batch_size, should_compile

    if labels and prompts_file:
        raise ConfigError("pass either --labels or --prompts, not both")
    meta = read_artifact(model)
    check_negative_prompt(negative_prompt, meta, guidance, log)
    schema = LabelSchema.from_json(meta["labels"])
    if isinstance(labels, ConditionSpec):  # already parsed (synth eval: balanced, without the normalisation note)
        spec = labels
    elif prompts_file and Path(prompts_file).suffix.lower() in (".csv", ".jsonl"):
        labels_cfg = (meta.get("config") or {}).get("labels") or {}  # clean captions as training did
        spec = parse_prompt_manifest(prompts_file, schema, prompts_split, clean=labels_cfg.get("clean_captions", True),
                                     section=labels_cfg.get("report_section", "all"))
    elif prompts_file:
        spec = parse_prompt_file(prompts_file, schema)
    else:
        given = labels is not None  # an empty --labels (an unset shell variable) is an error, not "uniform"
        spec = parse_label_spec(labels if given else ",".join(schema.classes), schema,
                                log=log if given else (lambda m: None))
    d = meta.get("default_sampling", {})
    dev = prepare_device(device, dtype)
    bs = batch_size_arg(batch_size, out)
    req = BulkRequest(model=meta["path"], out=str(out), n=n, spec=spec, sampler=sampler or d.get("sampler", "dpmpp_2m"),
                      steps=steps if steps is not None else d.get("steps", 25),
                      guidance=guidance if guidance is not None else d.get("guidance", 1.5),
                      seed=seed, batch_size=bs or 64, format=fmt, shard_size=shard_size, dtype=dtype,
                      overwrite=overwrite, shrink=shrink, allow_pickle=allow_pickle, negative_prompt=negative_prompt)
    req = _legacy_label_order(req, schema)  # a set made before exact quotas keeps its labels (before the out check)
    _check_out_first(req, meta, dev, out, bs is not None)
    gen = load_generator(meta["path"], device=dev, dtype=DTYPES[dtype], allow_pickle=allow_pickle)
    if bs is None:
        from synth.distributed import broadcast_from_main

        # every rank must use rank 0's choice: a GPU set's batch shape is part of its identity
        req = replace(req, batch_size=broadcast_from_main(auto_batch_size(gen, req.guidance, dev)))
        log(f"note: --batch-size auto -> {req.batch_size}")
    do_compile = compile if compile is not None else should_compile(dev, req.n, req.steps, req.sampler, req.guidance, gen)
    if compile is None and do_compile:
        log(f"note: compiling the UNet (a {req.n}-image set amortises the warm-up; --no-compile to skip)")
    try:
        gen.optimize(compile=do_compile, channels_last=channels_last, attention=attention, chunk_size=chunk_size or None)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return run_bulk(req, gen, device=dev, progress=progress, log=log)


def check_negative_prompt(text: str, meta: dict, guidance: float | None, log: Callable[[str], None]) -> None:
    """A negative prompt needs a text-conditioned model, and guidance to act through."""
    if not text:
        return
    if meta.get("kind") == "bridge" or meta.get("conditioner", "text") != "text":
        raise ConfigError(f"--negative-prompt needs a text-conditioned model, but '{meta['path']}' is conditioned on "
                          f"classes only (a '{meta.get('kind')}' export); drop --negative-prompt")
    problem = prompt_problem(text, empty_ok=True)
    if problem:
        raise ConfigError(f"--negative-prompt must be one line of text under {MAX_PROMPT_CHARS:,} characters, but it "
                          f"{problem}; shorten it")
    g = guidance if guidance is not None else meta.get("default_sampling", {}).get("guidance", 1.5)
    if g == 1.0:
        log("note: --negative-prompt has no effect at --guidance 1 (guidance is what steers away from it)")


def translate_set(model: str | Path, input_: str | Path, source: str, target: str, out: str | Path, *,
                  tau: float | None = None, split: str = "all", guidance: float | None = None,
                  steps: int | None = None, sampler: str | None = None, batch_size="auto", seed: int = 0,
                  fmt: str = "imagefolder", shard_size: int = 1000, dtype: str = "float32", chunk_size: int = 0,
                  device: str | None = None, overwrite: bool = False, shrink: bool = False, allow_pickle: bool = False,
                  progress: bool = True, log: Callable[[str], None] = print) -> BulkResult:
    """Every image of ``input_`` translated from domain ``source`` to ``target`` into ``out``, labels kept."""
    from synth.samplers.generator import model_parts
    from synth.samplers.translate import TranslateJob, TranslateRequest, check_translate, input_fingerprint, load_input

    meta = read_artifact(model)
    family, conditioner, _ = model_parts(meta)
    if family != "flow":
        raise ArtifactError(f"'{meta['path']}' holds a '{meta.get('kind', 'ldm')}' diffusion model, not a bridge or "
                            f"another flow model; translation needs an export of 'synth train bridge' (or of "
                            f"'synth train ldm --set train.path=flow', between two captions)")
    if conditioner == "none":
        raise ArtifactError(f"'{meta['path']}' holds an unconditional model: it has no source and target to "
                            f"translate between; use a bridge or a caption-conditioned flow model")
    dev = prepare_device(device, dtype)
    d = meta.get("default_sampling", {})
    t = tau if tau is not None else d.get("tau", 0.5)
    if source == target:
        log(f"note: source and target are both '{source}': a round trip (back to t={t:g} and forward "
            f"again), which reproduces the input up to the solver's error")
    data = load_input(input_, meta["resolution"], split)
    bs = batch_size_arg(batch_size, out)
    req = TranslateRequest(model=meta["path"], out=str(out), n=len(data), spec=None,
                           sampler=sampler or d.get("sampler", "euler"),
                           steps=steps if steps is not None else d.get("steps", 20),
                           guidance=guidance if guidance is not None else d.get("guidance",
                                                                                 1.5 if conditioner == "text" else 1.0),
                           seed=seed,
                           batch_size=bs or 64, format=fmt, shard_size=shard_size, dtype=dtype, overwrite=overwrite,
                           shrink=shrink, allow_pickle=allow_pickle, input=str(input_), source=source, target=target,
                           tau=t, split=split, input_hash=input_fingerprint(data))
    _check_out_first(req, meta, dev, out, bs is not None)
    gen = load_generator(meta["path"], device=dev, dtype=DTYPES[dtype], allow_pickle=allow_pickle)
    gen.optimize(chunk_size=chunk_size or None)
    check_translate(req, gen, data)
    if bs is None:
        req = replace(req, batch_size=64 if not dev.startswith("cuda") else 256)
    return run_bulk(req, gen, device=dev, progress=progress, log=log, job=TranslateJob(req, data, gen))


__all__ = ["check_negative_prompt", "batch_size_arg", "prepare_device", "sample_set", "translate_set"]
