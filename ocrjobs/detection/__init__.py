"""ocrjobs.detection."""
