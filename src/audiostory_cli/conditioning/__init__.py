"""Conditioning: plan -> per-event text tokens in the decoder's text space (``base.Conditioner``)."""
