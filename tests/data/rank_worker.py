"""Run under torchrun: one epoch of a loader on this rank, written as JSON for the test to check.

usage: torchrun --standalone --nproc_per_node=N rank_worker.py DATA SPLIT BATCH WORKERS OUT_PREFIX
"""

import json
import sys

import numpy as np
import torch.distributed as dist

from recfunnel.data.loader import StreamingBatchLoader


def row_keys(batch, single_hot: list[str]) -> list[str]:
    """A string per real row: its single-hot ids and first label, which identify a row in the test data."""
    cols = [batch.sparse[k].values().numpy() for k in single_hot]
    keep = batch.weights.numpy() > 0
    mat = np.stack(cols + [batch.labels[:, 0].numpy().astype(np.int64)], axis=1)[keep]
    return [",".join(map(str, r)) for r in mat.tolist()]


def main() -> None:
    data, split, batch_size, workers, out = sys.argv[1:6]
    dist.init_process_group("gloo")
    loader = StreamingBatchLoader(data, split, batch_size=int(batch_size), num_workers=int(workers), seed=7)
    keys, batches = [], 0
    for batch in loader:
        batches += 1
        keys += row_keys(batch, [f.name for f in loader.manifest.single_hot])
    with open(f"{out}{dist.get_rank()}.json", "w") as f:
        json.dump({"len": len(loader), "batches": batches, "rows": keys}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
