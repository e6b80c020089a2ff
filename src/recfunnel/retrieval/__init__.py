"""Retrieval: tower embeddings out of a trained two-tower model, into a vector index, top-K."""
