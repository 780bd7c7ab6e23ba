"""Batch runs: ``local.py`` (one machine, resumable) and ``ray.py`` (Ray Data, for clusters), sharing
``prompts.py`` (the prompts file), ``resume.py`` (what is finished, leftovers, the folder lock) and
``manifest.py`` (one JSON record per line, appended as each story ends)."""
