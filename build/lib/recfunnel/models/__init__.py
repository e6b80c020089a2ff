"""Models: single-device and loss-free. Rankers return logits, towers return embeddings."""
