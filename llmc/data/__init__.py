from .calib import load_calib, load_text_corpus  # noqa: F401
