"""A dataset folder in -> shuffled TorchRec batches out, each row exactly once per epoch, resumable
mid-epoch on any number of ranks: ``dataset`` (the StreamingDataset over row blocks: partition,
windows, padding, resumption), ``window`` (batches gathered from blocks in memory), ``loader``
(``StreamingBatchLoader`` and ``Batch``, what training iterates).
"""
