"""autotune: monitor -> detect -> diagnose -> fix -> verify, for LLM inference nodes."""

__version__ = "0.1.0"
