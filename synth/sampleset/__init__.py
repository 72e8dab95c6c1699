"""The sample set format, in one place: ``synth sample`` and ``synth translate`` write it
(:mod:`synth.samplers.bulk`), :mod:`synth.augment`, ``synth eval`` and ``synth inspect`` read it.

* :mod:`~synth.sampleset.layout`: folder layout, shard and file names, metadata rows.
* :mod:`~synth.sampleset.conditions`: label weights / prompt lines and the condition of image i.
* :mod:`~synth.sampleset.records`: per-shard done records (file sizes and hashes) and PNG integrity.
* :mod:`~synth.sampleset.manifest`: ``manifest.json``, written from the records, read and checked.
* :mod:`~synth.sampleset.rows`: ``metadata.jsonl`` / ``quality.jsonl``, read safely.

Label allocation (which class image i gets) is :mod:`synth.allocation`.
"""
