"""ocrjobs: OCR at cluster scale on Ray (bulk jobs, distributed training, online ensemble serving)."""

import os as _os

# PyTorch's CPU convolutions run on oneDNN, which caches one compiled primitive, with its buffers, per
# layer and input shape: up to 1,024 of them by default. Text crops come in any width, so a long-lived
# process (a Serve replica, a bulk actor) kept compiling new shapes and grew: a recogniser fed crops
# of random widths went from 0.7 to 2.2 GB over 400 batches, and a Serve Recognizer from 2.3 to 3.9 GB
# over 1,000 SROIE receipts (docs/benchmarks.md, "Serve soak"). 64 primitives keep it flat at the
# working set with no loss of speed. oneDNN reads the variable when its cache is first used, so setting
# it on import (before any model runs) is enough; a value the user exported wins.
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

__version__ = "0.1.0"
__all__ = ["__version__"]
