"""Text-line recognition: tokenizers, recognisers (CRNN, ASTER, SATRN), decoders, losses, predictor.

Modules: ``tokenizer`` (charsets, CTC/attention tokenizers), ``crnn``/``aster``/``satrn`` (networks),
``models`` (the ``ARCHS`` table), ``decode`` (greedy/beam decoding and sequence scores), ``losses``,
``predictor`` (``RecognitionPredictor``, the unit every host runs). Import from those modules; this
package module stays import-light on purpose.
"""
