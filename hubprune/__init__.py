"""hubprune: prune a causal LM from the Hugging Face Hub, heal it, evaluate it, publish it."""

__version__ = "0.1.0"
