"""ocrjobs.training."""
