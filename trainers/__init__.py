"""Training loops (accelerate), checkpoint/resume and export."""
