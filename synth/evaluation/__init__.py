"""Evaluation: does synthetic data help, and is it faithful?  The layer above training and sampling (it trains
generators and classifiers and samples sets), beside :mod:`synth.trainers` and :mod:`synth.samplers`.

* :mod:`~synth.evaluation.protocol`: ``synth eval augment`` (RoentGen's downstream protocol, resumable).
* :mod:`~synth.evaluation.arms`: one classifier arm (real / mixed / synthetic / pretrain).
* :mod:`~synth.evaluation.real`: the classifier's real splits and the generator-subset check.
* :mod:`~synth.evaluation.fidelity` / :mod:`~synth.evaluation.fidelity_cli`: FID/KID, label fidelity,
  diversity, memorisation, privacy; ``synth eval fidelity``.
* :mod:`~synth.evaluation.report`: the study's tables and chart.
"""
