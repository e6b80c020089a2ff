"""The prepared dataset folder, as written by ``prepare`` and read by everything after it:

``manifest``  manifest.json: features, labels, splits, block sizes
``rows``      encoded rows in columnar numpy form (the unit written, shuffled and batched)
``shards``    MDS shards whose samples are blocks of rows, and their checks
``vocab``     raw value <-> index tables (vocab/<feature>.parquet), and hashing
``pairs``     each split's (user, item) pairs, item popularity, what counts as already seen
``catalog``   every user or item as tower inputs (users.parquet, items.parquet)
``read``      a split's shards read back whole
``request_encoder``  raw values of a request -> model inputs, exactly as ``prepare`` encoded them
"""
