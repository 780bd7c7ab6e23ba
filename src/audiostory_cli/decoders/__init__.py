"""Decoders: one module (or package) per backend behind the ``Decoder`` protocol in ``base.py``."""
