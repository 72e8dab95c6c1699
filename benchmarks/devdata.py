"""Where the benchmarks find the development data (../shared/data), never written into presets.

Presets name data by data set name (``pneumoniamnist``, ``kermany-cxr-224``); these helpers point
them at ``$SYNTH_SHARED_DATA`` (default ``../shared/data`` beside the repository) when it exists.
"""
from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("SYNTH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def dev_data_overrides(data_name: str) -> list[str]:
    """``--set`` overrides that resolve ``data_name`` to the development copy, if there is one."""
    if (SHARED / "medmnist").is_dir():
        os.environ.setdefault("SYNTH_DATA_DIR", str(SHARED / "medmnist"))
    if not Path(data_name).exists() and (SHARED / data_name).exists():
        return [f"data.name={SHARED / data_name}"]
    return []
