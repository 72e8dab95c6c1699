"""Synthetic images in your own PyTorch training loop.

Two lines::

    from synth.augment import mix
    train_ds = mix(train_ds, "synthetic/", fraction=0.3, transform=train_transform)

Pieces (all plain ``torch.utils.data`` datasets and samplers):

* :class:`SyntheticSet`: map-style dataset over an imagefolder set written by
  ``synth sample`` / ``synth translate`` (``shard-XXXXX/<index>.png`` + ``metadata.jsonl``).
* :class:`SyntheticStream`: iterable dataset streaming a webdataset set's tar shards (or an
  imagefolder set in file order), split across DataLoader workers and distributed ranks.
* :class:`MixedDataset` / :func:`mix`: real + synthetic in one map-style dataset (a fraction per
  epoch, optionally class-balanced); :class:`MixedBatchSampler`: an exact number of synthetic
  items in every batch.
* :func:`quality_filter`: keep only images a classifier recognises as their requested label.
* :class:`OnlineSynthetic`: images generated on the fly from a loaded generator.

Labels are matched by name (:func:`map_labels`): the set's class names against yours,
case-insensitive, ``_``/``-``/space alike; ``label_map`` renames or drops classes.
Every bad input raises :class:`AugmentError` with one line naming the problem and the fix.

Core package: imports only torch, numpy, PIL, the standard library and ``synth.*``.  Its modules follow
the seams: :mod:`~synth.augment.names` (class matching), :mod:`~synth.augment.sets` (reading a set),
:mod:`~synth.augment.mixing`, :mod:`~synth.augment.quality`, :mod:`~synth.augment.online`; the set format
itself is :mod:`synth.sampleset`.
"""
from synth.augment.mixing import MixedBatchSampler, MixedDataset, _real_labels, mix, water_fill  # noqa: F401
from synth.augment.names import map_labels
from synth.augment.online import OnlineSynthetic
from synth.augment.quality import module_hash, quality_filter
from synth.augment.sets import (SyntheticSet, SyntheticStream, default_image, dist_rank_world, pil_to_uint8,
                                uint8_to_pil)
from synth.sampleset.errors import AugmentError
from synth.sampleset.layout import FREE_TEXT
from synth.sampleset.manifest import read_set_manifest, set_classes
from synth.sampleset.rows import quality_kept, read_quality, read_rows

__all__ = ["AugmentError", "read_set_manifest", "set_classes", "map_labels", "SyntheticSet", "SyntheticStream",
           "MixedDataset", "MixedBatchSampler", "mix", "quality_filter", "OnlineSynthetic", "water_fill", "module_hash",
           "FREE_TEXT", "default_image", "dist_rank_world", "pil_to_uint8", "uint8_to_pil", "quality_kept",
           "read_quality", "read_rows"]
