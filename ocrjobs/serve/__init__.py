"""ocrjobs.serve."""
