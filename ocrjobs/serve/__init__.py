"""Online OCR on Ray Serve.

Modules: ``config`` (``ServeConfig``, the typed ``args`` of the application, and the Serve config file
around it), ``app`` (the ``Detector``/``Recognizer``/``OcrApi`` deployments and ``build_app``, the
application builder named in ``configs/serve.yaml``), ``cli`` (``ocrjobs serve``). Import from those
modules; this package module stays import-light so ``ocrjobs --help`` does not load Ray Serve.
"""
