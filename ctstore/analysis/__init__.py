"""Analyses of embeddings and weights (docs/design.md §6): pure functions on arrays."""
