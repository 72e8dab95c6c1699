"""Training loops (accelerate), checkpoint/resume and export."""
if not __name__.startswith("synth."):  # a second copy of every module, with its own error classes
    raise ImportError(f"import synth.trainers, not {__name__}: the trainers folder installs as synth.trainers")
