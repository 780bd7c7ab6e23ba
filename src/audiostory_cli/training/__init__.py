"""Training: ``bridge.py`` is ``audiostory train-bridge`` (semantic alignment of the planner to the decoder)."""
