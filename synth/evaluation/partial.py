"""The warning a partial ``synth eval augment`` report (``--partial``) opens with."""
from __future__ import annotations


def partial_lines(summary: dict) -> list[str]:
    """A partial report's warning: how much of the study it holds (nothing for a finished study)."""
    part = summary.get("partial")
    if not part:
        return []
    missing = ", ".join(f"{f:g}" for f in part["missing_fractions"]) or "none"
    return [f"**Partial report**: {part['done']} of {part['planned']} planned classifiers have finished (fractions "
            f"with classifiers still to run: {missing}); a row's mean is over the seeds finished so far (its n in "
            f"the JSON), targets may change, and fidelity is left out until the study is complete.", ""]
