"""synth: labelled synthetic medical images (core package)."""
__version__ = "0.1.0"
