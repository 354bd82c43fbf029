"""tiny-vila: a tiny vision-language model with NVlabs/VILA 1.5's code layout and API."""

__version__ = "0.2.0"
