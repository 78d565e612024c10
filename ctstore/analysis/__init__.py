"""Analyses of embeddings and weights (DESIGN.md section 5): pure functions on arrays."""
