"""The studio: a local Gradio page over the library (``audiostory studio``, the studio extra): ``files.py`` (the
output folder and its guard), ``session.py`` (the calls into the library, versions), ``app.py`` (the page)."""
