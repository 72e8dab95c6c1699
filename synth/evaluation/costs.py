"""What a study's synthetic data cost: ``costs.json`` in the study folder, one entry per generator and set."""
from __future__ import annotations

import json
from pathlib import Path

from synth.io import atomic_write_json


def record_cost(out: Path, name: str, seconds: dict[str, float], *, add: bool) -> None:
    """Write the seconds spent making a generator or a set into ``costs.json`` (the price of an arm): ``add``
    accumulates this call's seconds (a set finished over several calls); otherwise they replace what was there
    (a generator's export already sums every call that trained it)."""
    if not seconds:
        return
    path = out / "costs.json"
    costs = json.loads(path.read_text()) if path.is_file() else {}
    mine = costs.setdefault(name, {})
    for what, s in seconds.items():
        mine[what] = mine.get(what, 0.0) + s if add else s
    atomic_write_json(path, costs)


def generator_seconds(export: Path) -> dict[str, float]:
    """{"generator_s", "generator_cpu_s"} from an export's ``training`` record: every call that trained it,
    to its last checkpoint; empty (what costs.json holds is kept) for an export whose record is missing or
    incomplete (trained before synth counted, or resumed from such a checkpoint)."""
    from synth.samplers.artifact import ARTIFACT_FILE

    rec = json.loads((Path(export) / ARTIFACT_FILE).read_text()).get("training") or {}
    if "cpu_s" not in rec or rec.get("from_step"):
        return {}
    return {"generator_s": rec["wall_s"], "generator_cpu_s": rec["cpu_s"]}


def read_costs(out: Path) -> dict:
    """costs.json as {generator or set name: {"generator_s", "generator_cpu_s", "sample_s", "sample_cpu_s"}}."""
    path = out / "costs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


__all__ = ["record_cost", "generator_seconds", "read_costs"]
