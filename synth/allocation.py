"""Which class image ``i`` of a sample set gets: the one label sequence that ``synth sample``,
``eval`` and the online datasets all use.

Two orders exist:

- ``"quota"`` (every set made since it was added): earliest-deadline-first over per-class quotas.  After every
  prefix of ``m`` images each class has ``floor`` or ``ceil`` of ``m * weight`` images, so a set
  of ``n`` images asked as ``a=0.2,b=0.8`` holds exactly ``0.2 n`` and ``0.8 n`` whenever those
  are whole, and raising ``--n`` keeps every label already given (the sequence does not
  depend on ``n``).
- ``"weyl"`` (sets made before): a golden-ratio sequence, within a few images of the weights;
  kept so that those sets resume and extend with the labels they already hold.
"""
from __future__ import annotations

import math
import threading
from array import array

GOLDEN = (math.sqrt(5) - 1) / 2
ORDERS = ("quota", "weyl")
Weights = tuple  # ((class id, weight), ...) with weights > 0 summing to 1, sorted by class id


def weyl_label(index: int, weights: Weights) -> int:
    """The legacy golden-ratio label of image ``index``."""
    u = (0.5 + index * GOLDEN) % 1.0
    acc = 0.0
    for k, w in weights:
        acc += w
        if u < acc:
            return k
    return weights[-1][0]


class _QuotaSequence:
    """The quota sequence of one weight tuple, grown on demand (O(n K) once, then O(1) per index)."""

    # Each class's next image is a unit job: released once taking it keeps the class at or below
    # ceil(m w) (count < m w), due before the class would fall below floor(m w) (step (count + 1) / w).
    # Earliest deadline first among released jobs meets every deadline (such a schedule always
    # exists), so every prefix is within the quota; ties go to the class listed first.  The
    # tolerance absorbs float noise in weights such as 0.2 (5 * 0.2 is 1.0000000000000002).
    TOL = 1e-9

    def __init__(self, weights: Weights):
        self.ids = [k for k, _ in weights]
        self.w = [w for _, w in weights]
        self.counts = [0] * len(weights)
        # 2 bytes a label (class ids are < 10,000): 2 MB per million images; building costs ~1 us a label, so a
        # set of 10^8 images pays ~2 minutes and 200 MB once per process
        self.labels = array("H")
        self.lock = threading.Lock()

    def upto(self, n: int) -> array:
        """The first ``n`` labels (at least; the list may be longer)."""
        with self.lock:
            labels, counts, w = self.labels, self.counts, self.w
            for m in range(len(labels) + 1, n + 1):
                best, best_due = -1, math.inf
                for j, wj in enumerate(w):
                    if counts[j] < m * wj - self.TOL:
                        due = (counts[j] + 1) / wj
                        if due < best_due - self.TOL:
                            best, best_due = j, due
                if best < 0:  # float noise left nobody released: the class furthest below its share
                    best = max(range(len(w)), key=lambda j: m * w[j] - counts[j])
                counts[best] += 1
                labels.append(self.ids[best])
            return labels


_SEQUENCES: dict[Weights, _QuotaSequence] = {}
_SEQUENCES_LOCK = threading.Lock()


def _sequence(weights: Weights) -> _QuotaSequence:
    with _SEQUENCES_LOCK:
        seq = _SEQUENCES.get(weights)
        if seq is None:
            if len(_SEQUENCES) >= 16:  # a long-lived process sampling many specs keeps only recent ones
                _SEQUENCES.pop(next(iter(_SEQUENCES)))
            seq = _SEQUENCES[weights] = _QuotaSequence(weights)
        return seq


def label_at(index: int, weights: Weights, order: str = "quota") -> int:
    """Class id of image ``index`` under ``weights`` ((class id, weight) pairs summing to 1)."""
    if order == "weyl":
        return weyl_label(index, weights)
    if order != "quota":
        raise ValueError(f"unknown label order {order!r}; expected one of {', '.join(ORDERS)}")
    return _sequence(tuple(weights)).upto(index + 1)[index]


def labels_for(n: int, weights: Weights, order: str = "quota") -> list[int]:
    """Class ids of images ``0..n-1`` (n,)."""
    if order == "weyl":
        return [weyl_label(i, weights) for i in range(n)]
    return _sequence(tuple(weights)).upto(n)[:n].tolist()


__all__ = ["GOLDEN", "ORDERS", "label_at", "labels_for", "weyl_label"]
