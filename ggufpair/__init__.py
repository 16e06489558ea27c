"""ggufpair: pair a GGUF target with a draft model for llama.cpp speculative decoding."""

__version__ = "0.1.0"
