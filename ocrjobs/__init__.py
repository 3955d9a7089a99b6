"""ocrjobs: OCR at cluster scale on Ray (bulk jobs, distributed training, online ensemble serving)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
