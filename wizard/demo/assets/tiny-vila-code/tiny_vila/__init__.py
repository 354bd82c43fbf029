"""tiny-vila: a tiny VILA-shaped vision-language model."""

__version__ = "0.1.0"
