"""Inputs other than a prompt, turned into timed slots the planner fills: timeline files (SRT, WebVTT, JSON and
CSV shot lists: ``timelines``), a video's streams, shots and frames (``video``) and the vision-language models
that describe its shots (``describers``)."""
