"""herd: the Llama 3 system, end to end."""

__version__ = "0.1.0"
