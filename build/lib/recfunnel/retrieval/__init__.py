"""Retrieval: tower embeddings out of a trained two-tower model (``embeddings``), into a vector
index (``index``, ``index_build``), kept as the run's item index folder (``item_index``)."""
