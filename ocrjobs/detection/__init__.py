"""Text detection: DBNet/DBNet++ models, their targets and loss, post-processing and the predictor.

The submodules are imported by name (``from ocrjobs.detection.predictor import DetectionPredictor``);
this package file imports nothing so that numpy-only users (post-processing in a CPU stage) do not
pay for torch.
"""
