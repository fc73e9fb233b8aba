"""Evaluation of checkpoints: perplexity, lm-evaluation-harness adapter, needle in a haystack, BABILong."""
