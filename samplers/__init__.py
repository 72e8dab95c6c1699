"""Shared integrators and generators that load exported artifacts."""
if not __name__.startswith("synth."):  # a second copy of every module, with its own error classes
    raise ImportError(f"import synth.samplers, not {__name__}: the samplers folder installs as synth.samplers")
