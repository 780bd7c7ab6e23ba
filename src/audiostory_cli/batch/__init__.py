"""Batch runs: ``local.py`` (one machine, resumable) and ``ray.py`` (Ray Data, for clusters)."""
