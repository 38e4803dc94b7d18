"""gpt2es: train GPT-2-style language models on Spanish text."""

__version__ = "0.1.0"
