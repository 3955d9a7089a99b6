"""ocrjobs.data."""
