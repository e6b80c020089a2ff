"""DLRM training samples/s in the Criteo Kaggle shape, three ways in one run.

Shape: 13 dense features, 26 single-hot tables of ``rows_per_table`` x 16, bottom MLP
13-512-256-64-16, dot interaction of the 27 vectors, top MLP 367-512-256-1, BCE loss.

- ``recfunnel``: :func:`~recfunnel.models.ranker.build_ranker` ("dlrm") on the meta device, wrapped
  by :func:`~recfunnel.train.distributed.wrap` (TorchRec DistributedModelParallel, Adagrad fused
  into the table-batched embedding kernel, dense Adagrad on the MLPs), loss from :class:`RankingLoss`.
  Full (not row-wise) Adagrad, so both sides do the same maths: fbgemm's CPU row-wise Adagrad
  kernel measured ~2x slower than its full Adagrad one here.
- ``plain``: the same model in plain PyTorch: 26 ``nn.EmbeddingBag(sparse=True)``, the same
  MLPs, the interaction as the reference ``dlrm_s_pytorch.py`` writes it (``Z[:, li, lj]``),
  ``torch.optim.Adagrad`` on the sparse table gradients and on the MLPs (same dense optimizer and
  learning rate on both sides).
- ``roofline``: fp32 matmul GFLOP/s measured in the same run, divided by the model's training
  FLOPs per sample (:func:`flops_per_sample`): the rate if every FLOP ran at matmul speed.

Ids are Zipf-distributed by default (``zipf``; 0 = uniform), as categorical ids of real click logs
are; hot rows are scattered through each table. Both models train on a few random batches
generated up front and cycled (the KeyedJaggedTensor of ours and the offsets/indices of the
baseline are built once per batch before timing), so data feeding is excluded from both equally.
Each variant is warmed up, then the variants are measured in turn ``repeats`` times (the machine
is shared and noisy); medians are reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.bench.machine import matmul_gflops
from recfunnel.config import OptimizerConfig, load_config
from recfunnel.data.format.manifest import DenseFeature, Label, Manifest, SparseFeature, SplitInfo
from recfunnel.models.ranker import build_ranker
from recfunnel.report import table
from recfunnel.train.distributed import World, init_world, wrap
from recfunnel.train.losses import RankingLoss

__all__ = ["bench_train", "print_bench", "flops_per_sample"]

DENSE_FEATURES = 13
TABLES = 26
DIM = 16
BOTTOM_MLP = [512, 256, 64]  # then DIM
TOP_MLP = [512, 256]  # then 1 logit
LR = 0.01
EMBEDDING_OPTIMIZER = "adagrad"  # fused into TorchRec's kernel; the same maths as the baseline's Adagrad
DISTINCT_BATCHES = 4
WARMUP_STEPS = 3


class _Batch(NamedTuple):
    dense: torch.Tensor  # float32 (B, 13)
    ids: torch.Tensor  # int64 (B, 26): one row index per table
    labels: torch.Tensor  # float32 (B, 1)


def flops_per_sample(
    *,
    dense: int = DENSE_FEATURES,
    tables: int = TABLES,
    dim: int = DIM,
    bottom: list[int] = BOTTOM_MLP,
    top: list[int] = TOP_MLP,
) -> int:
    """Training FLOPs of one sample of a DLRM with single-hot tables.

    Multiply-adds (MACs) of the forward pass: every linear layer ``in * out`` (bottom
    ``dense -> *bottom -> dim``, top ``dim + n(n-1)/2 -> *top -> 1`` with ``n = tables + 1``
    vectors), plus the interaction's batched matmul ``n * n * dim`` (the full n x n product, as
    both implementations compute it, of which the upper triangle is kept). A MAC is 2 FLOPs and
    the backward pass costs twice the forward (gradients of inputs and of weights), so
    FLOPs = 3 * 2 * MACs. Biases, ReLUs, the loss and embedding look-ups are left out: they are
    O(width) per sample and memory-bound, not matmuls.
    """
    n = tables + 1
    sizes_bottom = [dense, *bottom, dim]
    sizes_top = [dim + n * (n - 1) // 2, *top, 1]
    macs = sum(a * b for sizes in (sizes_bottom, sizes_top) for a, b in zip(sizes, sizes[1:]))
    macs += n * n * dim
    return 3 * 2 * macs


def bench_train(
    *,
    batch_size: int = 2048,
    steps: int = 20,
    repeats: int = 3,
    threads: int = 0,
    rows_per_table: int = 100_000,
    zipf: float = 1.05,
) -> dict[str, Any]:
    """Training samples/s of recfunnel's DLRM, of plain PyTorch, and the machine's roofline."""
    for name, value, least in (
        ("batch_size", batch_size, 1),
        ("steps", steps, 1),
        ("repeats", repeats, 1),
        ("threads", threads, 0),
        ("rows_per_table", rows_per_table, 2),
    ):
        if value < least:
            raise ValueError(f"{name}: expected an integer >= {least}, got {value!r}")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    owns_group = not dist.is_initialized()
    try:
        generator = torch.Generator().manual_seed(0)
        batches = [_random_batch(batch_size, rows_per_table, generator, zipf) for _ in range(DISTINCT_BATCHES)]
        world = init_world()  # on a GPU machine, both models and the matmuls run on its GPU
        device = world.device
        variants = {
            "recfunnel": _recfunnel_step(batches, rows_per_table, world),
            "plain": _plain_step(batches, rows_per_table, device),
        }
        for step in variants.values():
            for i in range(WARMUP_STEPS):
                step(i)
        runs: dict[str, list[float]] = {"recfunnel": [], "plain": [], "matmul_gflops": []}
        for _ in range(repeats):
            for name, step in variants.items():
                runs[name].append(_rate(step, steps, batch_size, device))
            runs["matmul_gflops"].append(matmul_gflops(device))
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
    ours, plain, gflops = (statistics.median(runs[k]) for k in ("recfunnel", "plain", "matmul_gflops"))
    flops = flops_per_sample()
    roofline = gflops * 1e9 / flops
    return {
        "samples_per_s": round(ours),
        "plain_pytorch_samples_per_s": round(plain),
        "roofline_samples_per_s": round(roofline),
        "vs_plain": round(ours / plain, 3),
        "vs_roofline": round(ours / roofline, 3),
        "plain_vs_roofline": round(plain / roofline, 3),
        "matmul_gflops": round(gflops, 1),
        "flops_per_sample": flops,
        "threads": used_threads,
        "device": str(device),
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "rows_per_table": rows_per_table,
        "zipf": zipf,
        "embedding_optimizer": EMBEDDING_OPTIMIZER,
        "runs": {
            "recfunnel": [round(x) for x in runs["recfunnel"]],
            "plain": [round(x) for x in runs["plain"]],
            "matmul_gflops": [round(x, 1) for x in runs["matmul_gflops"]],
        },
    }


def print_bench(result: dict[str, Any]) -> None:
    ours = result["samples_per_s"]
    roofline = result["roofline_samples_per_s"]
    rows = [
        [
            "recfunnel DLRM (TorchRec DMP, Adagrad fused into the embedding kernel)",
            ours,
            f"{ours / ours:.2f}x",
            f"{ours / roofline:.0%}",
        ],
        [
            "plain PyTorch (EmbeddingBag sparse=True, Adagrad)",
            result["plain_pytorch_samples_per_s"],
            f"{result['plain_pytorch_samples_per_s'] / ours:.2f}x",
            f"{result['plain_vs_roofline']:.0%}",
        ],
        [
            f"roofline ({result['matmul_gflops']:.0f} GFLOP/s matmul / {result['flops_per_sample'] / 1e6:.2f} MFLOP)",
            roofline,
            f"{roofline / ours:.2f}x",
            "100%",
        ],
    ]
    print(
        table(
            rows,
            ["variant", "samples/s (median)", "vs recfunnel", "of roofline"],
            title=f"DLRM training, Criteo Kaggle shape, batch {result['batch_size']:,}, "
            f"{result['rows_per_table']:,} rows/table, ids "
            + (f"Zipf {result['zipf']:g}" if result["zipf"] else "uniform")
            + f", {result['threads']} thread{'s' if result['threads'] > 1 else ''}, "
            f"median of {result['repeats']}",
        )
    )
    print(f"recfunnel / plain PyTorch = {result['vs_plain']:.2f}x, recfunnel / roofline = {result['vs_roofline']:.0%}")


def _random_ids(n: int, rows: int, zipf: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` row ids in [0, rows): uniform for ``zipf`` 0, else id k with probability ~ (k + 1)^-zipf
    (ids permuted so hot rows are scattered through the table, as hashing leaves them)."""
    if zipf == 0:
        return torch.randint(0, rows, (n,), generator=generator)
    p = 1.0 / torch.arange(1, rows + 1, dtype=torch.float64) ** zipf
    ranks = torch.multinomial(p / p.sum(), n, replacement=True, generator=generator)
    return torch.randperm(rows, generator=torch.Generator().manual_seed(rows))[ranks]


def _random_batch(batch_size: int, rows: int, generator: torch.Generator, zipf: float = 0.0) -> _Batch:
    ids = torch.stack([_random_ids(batch_size, rows, zipf, generator) for _ in range(TABLES)], dim=1)
    return _Batch(
        torch.randn(batch_size, DENSE_FEATURES, generator=generator),
        ids,
        torch.randint(0, 2, (batch_size, 1), generator=generator).float(),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # GPU work is queued: time it only once it is done
        torch.cuda.synchronize(device)


def _rate(step: Callable[[int], None], steps: int, batch_size: int, device: torch.device) -> float:
    """Samples per second of ``steps`` training steps."""
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def _recfunnel_step(batches: list[_Batch], rows: int, world: World) -> Callable[[int], None]:
    """One training step of recfunnel's DLRM on batch ``i % len(batches)``."""
    manifest = Manifest(
        kind="ctr",
        dense=[DenseFeature(f"I{i + 1}") for i in range(DENSE_FEATURES)],
        sparse=[SparseFeature(f"C{i + 1}", rows, encoding="hash") for i in range(TABLES)],
        labels=[Label("label")],
        splits={"train": SplitInfo(rows=0, blocks=[])},
        split={"kind": "none"},
        block_rows=1,
    )
    cfg = load_config(
        "dlrm",
        overrides=[
            f"model.embedding_dim={DIM}",
            f"model.bottom_mlp={BOTTOM_MLP}",
            f"model.top_mlp={TOP_MLP}",
            "model.dropout=0",
        ],
    ).model
    model = build_ranker("dlrm", manifest, cfg, device=torch.device("meta"))
    dmp, optimizer, _ = wrap(model, world, OptimizerConfig(EMBEDDING_OPTIMIZER, LR), OptimizerConfig("adagrad", LR))
    task = RankingLoss(cfg.heads, manifest)
    keys = manifest.sparse_keys
    inputs = []
    for b in batches:
        kjt = KeyedJaggedTensor(
            keys=keys,
            values=b.ids.T.contiguous().view(-1),
            lengths=torch.ones(b.ids.numel(), dtype=torch.int32),
            stride=len(b.ids),
        )
        device = world.device
        inputs.append((b.dense.to(device), kjt.to(device), b.labels.to(device), torch.ones(len(b.ids), device=device)))
    dmp.train()

    def step(i: int) -> None:
        dense, sparse, labels, weights = inputs[i % len(inputs)]
        loss = task.losses(dmp(dense, sparse), labels, weights)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


class _PlainDLRM(nn.Module):
    """The same DLRM in plain PyTorch: one EmbeddingBag per table (sparse gradients), the pairs of
    the interaction picked as the reference ``dlrm_s_pytorch.py`` does."""

    def __init__(self, rows: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, DIM, mode="sum", sparse=True) for _ in range(TABLES))
        self.bottom = _mlp([DENSE_FEATURES, *BOTTOM_MLP, DIM], last_relu=True)
        n = TABLES + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("rows", rows, persistent=False)  # buffers: they follow .to(device)
        self.register_buffer("cols", cols, persistent=False)
        self.top = _mlp([DIM + n * (n - 1) // 2, *TOP_MLP, 1], last_relu=False)

    def forward(self, dense: torch.Tensor, ids: list[torch.Tensor], offsets: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        pooled = [table(t, offsets) for table, t in zip(self.tables, ids)]
        stacked = torch.stack([x, *pooled], dim=1)
        dots = torch.bmm(stacked, stacked.transpose(1, 2))[:, self.rows, self.cols]
        return self.top(torch.cat([x, dots], dim=1))


def _mlp(sizes: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_relu or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _plain_step(batches: list[_Batch], rows: int, device: torch.device) -> Callable[[int], None]:
    """One training step of the plain-PyTorch DLRM on batch ``i % len(batches)``."""
    model = _PlainDLRM(rows).to(device)
    sparse_opt = torch.optim.Adagrad(model.tables.parameters(), lr=LR)
    dense_params = [p for name, p in model.named_parameters() if not name.startswith("tables.")]
    dense_opt = torch.optim.Adagrad(dense_params, lr=LR, eps=1e-8)
    inputs = [
        (
            b.dense.to(device),
            [c.contiguous().to(device) for c in b.ids.T],
            torch.arange(len(b.ids), device=device),
            b.labels[:, 0].to(device),
        )
        for b in batches
    ]
    model.train()

    def step(i: int) -> None:
        dense, ids, offsets, labels = inputs[i % len(inputs)]
        loss = F.binary_cross_entropy_with_logits(model(dense, ids, offsets)[:, 0], labels)
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        # sparse Adagrad builds COO tensors of indices it knows are valid: no checks (and no warning)
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            sparse_opt.step()
        dense_opt.step()

    return step
