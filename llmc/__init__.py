"""llmc: quantize and evaluate (vision-)language models."""

__version__ = "0.1.0"
