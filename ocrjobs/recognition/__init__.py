"""ocrjobs.recognition."""
