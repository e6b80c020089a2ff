"""Data's journey in: raw files -> validated, encoded rows -> MDS shards -> streamed batches."""
