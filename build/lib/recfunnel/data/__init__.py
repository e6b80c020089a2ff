"""Data's journey in, one subpackage per stage, each importing only the stages below it:

``sources/``  raw files (MovieLens, your CSV/Parquet, Criteo TSV, generated data, a Spark table)
              -> tables handed to ``prepare`` (or, for Criteo-shaped data, rows straight to shards).
``prepare/``  raw tables -> checked columns, labels, splits, vocabularies, encoded rows, written as
              a dataset folder.
``format/``   the dataset folder itself: manifest, block shards, vocabularies, pairs, user and item
              catalogues, and readers of it (including raw request values -> indices).
``stream/``   a dataset folder -> shuffled, resumable TorchRec batches for training.
``inspect``   what a dataset holds and what the loader makes of it (`recfunnel inspect / validate`).

A new source goes in ``sources/``; a new feature kind in ``prepare/`` (encoding) and ``format/``
(its manifest entry and request encoding); a new loader option in ``stream/``.
"""
