"""Run under torchrun: one epoch of a loader on this rank, written as JSON for the test to check.

usage: torchrun --standalone --nproc_per_node=N rank_worker.py DATA SPLIT BATCH WORKERS OUT_PREFIX [STOP [STATE]]

STOP > 0: stop after STOP batches and write the loader's state to OUT_PREFIXstate.json (rank 0).
STATE: resume from that state file first.
"""

import json
import sys

import numpy as np
import torch.distributed as dist

from recfunnel.data.stream.loader import StreamingBatchLoader


def row_keys(batch, single_hot: list[str]) -> list[str]:
    """A string per real row: its single-hot ids and first label, which identify a row in the test data."""
    cols = [batch.sparse[k].values().numpy() for k in single_hot]
    keep = batch.weights.numpy() > 0
    mat = np.stack(cols + [batch.labels[:, 0].numpy().astype(np.int64)], axis=1)[keep]
    return [",".join(map(str, r)) for r in mat.tolist()]


def main() -> None:
    data, split, batch_size, workers, out = sys.argv[1:6]
    stop = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    dist.init_process_group("gloo")
    loader = StreamingBatchLoader(data, split, batch_size=int(batch_size), num_workers=int(workers), seed=7)
    if len(sys.argv) > 7:
        with open(sys.argv[7]) as f:
            loader.load_state_dict(json.load(f))
    keys, batches, length = [], 0, len(loader)
    for batch in loader:
        batches += 1
        keys += row_keys(batch, [f.name for f in loader.manifest.single_hot])
        if batches == stop:
            break
    if stop and dist.get_rank() == 0:
        with open(f"{out}state.json", "w") as f:
            json.dump(loader.state_dict(), f)
    with open(f"{out}{dist.get_rank()}.json", "w") as f:
        json.dump({"len": length, "batches": batches, "rows": keys}, f)
    loader.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
