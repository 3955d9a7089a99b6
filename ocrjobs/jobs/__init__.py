"""ocrjobs.jobs."""
