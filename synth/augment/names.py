"""Class names of a synthetic set against yours: matched case-insensitively, `_`/`-`/space alike; ``label_map`` renames or drops."""
from __future__ import annotations

import difflib
import re
from typing import Mapping, Sequence


from synth.sampleset.errors import AugmentError


def _real_class_list(classes) -> list[str]:
    """A list of names, or a torchvision-style ``class_to_idx`` dict ordered by index."""
    if isinstance(classes, Mapping):
        return [str(k) for k, _ in sorted(classes.items(), key=lambda kv: kv[1])]
    if isinstance(classes, (str, bytes)):
        raise AugmentError(f"classes must be a list of class names, got the string '{classes}'; "
                           f"pass e.g. classes=train_ds.classes")
    return [str(c) for c in classes]


def _norm(name: str) -> str:
    """Names compare case-insensitively with '_', '-' and ' ' alike ('Pleural_Effusion' == 'pleural effusion')."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


def _find(name: str, names: list[str]) -> int | None:
    if name in names:
        return names.index(name)
    normed = [_norm(n) for n in names]
    return normed.index(_norm(name)) if _norm(name) in normed else None


def _suggest(name: str, real: list[str]) -> str | None:
    close = difflib.get_close_matches(_norm(name), [_norm(r) for r in real], n=1, cutoff=0.4)
    return real[[_norm(r) for r in real].index(close[0])] if close else None


def map_labels(set_classes: Sequence[str], real_classes, mapping: Mapping[str, str | None] | None = None) -> list[int]:
    """Synthetic label id -> real label id (``-1``: dropped), one entry per set class.

    Default: same name (case-insensitive, ``_``/``-``/space alike).  ``mapping`` (set name ->
    real name, or -> None to drop that synthetic class) overrides.  A set class with no
    match is an error that lists both label lists and the ``label_map={...}`` to pass.
    """
    set_names, real = [str(c) for c in set_classes], _real_class_list(real_classes)
    override: dict[int, str | None] = {}
    for key, target in dict(mapping or {}).items():
        i = _find(str(key), set_names)
        if i is None:
            raise AugmentError(f"label_map names '{key}', which is not a label of the synthetic set; "
                               f"set labels: {', '.join(set_names)}")
        override[i] = target
    out: list[int] = []
    missing: list[str] = []
    for i, name in enumerate(set_names):
        target = override.get(i, name)
        if i in override and target is None:
            out.append(-1)
            continue
        j = _find(str(target), real)
        if j is None and i in override:
            raise AugmentError(f"label_map sends '{name}' to '{target}', which is not a real class; "
                               f"real labels: {', '.join(real)}")
        if j is None:
            missing.append(name)
        out.append(-1 if j is None else j)
    if missing:
        example = {**{set_names[i]: t for i, t in override.items()}, **{m: _suggest(m, real) for m in missing}}
        raise AugmentError(f"synthetic labels {missing} match no real class; set labels: {', '.join(set_names)}; "
                           f"real labels: {', '.join(real)}; pass label_map={example!r} "
                           f"(a real class name, or None to drop that synthetic class)")
    return out


def _label_lookup(names: list[str], classes, label_map) -> tuple[list[int], list[str]]:
    """(set id -> output label or -1, output class names): mapped when ``classes`` is given."""
    if classes is None:
        if label_map:
            raise AugmentError("label_map needs classes=<your real class names> (e.g. classes=train_ds.classes) "
                               "to map the synthetic labels onto")
        return list(range(len(names))), list(names)
    return map_labels(names, classes, label_map), _real_class_list(classes)
