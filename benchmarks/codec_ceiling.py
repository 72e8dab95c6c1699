"""Judge accuracy on real images vs on their autoencoder reconstructions: the ceiling that
the codec puts on label fidelity.

    python benchmarks/codec_ceiling.py --run runs/bench/kermany-64 --config configs/kermany-64.yaml \
        --autoencoder runs/bench/kermany-64-autoencoder
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safetensors.torch import load_file  # noqa: E402

from synth.classifier import SmallCNN  # noqa: E402
from synth.config import load_config  # noqa: E402
from devdata import dev_data_overrides  # noqa: E402
from synth.data import load_split  # noqa: E402
from synth.io import to_float, to_uint8  # noqa: E402
from synth.trainers.classifier import accuracy  # noqa: E402
from synth.trainers.ldm import load_codec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--autoencoder", required=True)
    args = ap.parse_args()
    cfg = load_config(args.config, [f"model.autoencoder={args.autoencoder}"])
    cfg = load_config(args.config, dev_data_overrides(cfg.data.name) + [f"model.autoencoder={args.autoencoder}"])
    codec = load_codec(cfg)
    judge = SmallCNN(2)
    judge.load_state_dict(load_file(str(Path(args.run) / "judge.safetensors")))
    out = {"command": "python " + " ".join(sys.argv)}
    for split in ("val", "test"):
        s = load_split(dataclasses.replace(cfg.data, val_max_items=None), split, cfg.labels.classes)
        with torch.no_grad():
            rec = torch.cat([to_uint8(codec.decode(codec.encode(to_float(s.images[i:i + 64])))) for i in range(0, len(s), 64)])
        out[split] = {"n": len(s), "real": accuracy(judge, s.images, s.labels), "reconstructed": accuracy(judge, rec, s.labels)}
        print(split, json.dumps(out[split]))
    (ROOT / "benchmarks" / "results" / f"{Path(args.run).name}-codec-ceiling.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
