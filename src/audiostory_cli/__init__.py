"""audiostory: narrative audio from a story prompt (the AudioStory method, arXiv 2508.20088)."""

__version__ = "0.1.0"
