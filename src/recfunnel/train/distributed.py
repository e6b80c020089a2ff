"""The world this process trains in, read from the environment (torchrun, TorchDistributor, or none),
and the model wrapped in TorchRec's DistributedModelParallel with the planner's plan applied.

Models know nothing of this: they are built on the meta device and handed to :func:`wrap`.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardedTensor, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recfunnel.config import OptimizerConfig

__all__ = [
    "World",
    "init_world",
    "wrap",
    "init_embeddings",
    "dense_optimizer",
    "embedding_optimizer_class",
    "embedding_collections",
    "sequence_collections",
    "table_shapes",
    "PLANNER_SHARDING_TYPES",
]

# What the planner may choose by itself. Not data_parallel: its tables take a dense-kernel
# optimizer whose state differs from the fused one, so a checkpoint could not move between world
# sizes (and on CPU fbgemm warns its autograd kernel is unregistered). A config can still force it.
PLANNER_SHARDING_TYPES = ["table_wise", "row_wise", "table_row_wise", "column_wise"]
SEQUENCE_SHARDING_TYPES = ["table_wise", "row_wise", "column_wise"]  # what TorchRec shards unpooled tables by


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_world() -> World:
    """Join (or, alone, create) the process group: nccl on GPUs, gloo on CPU."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if world_size == 1 and "MASTER_ADDR" not in os.environ:
            # DMP needs a process group even alone; a private loopback one avoids env set-up
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        else:
            dist.init_process_group(backend)
    return World(rank, world_size, local_rank, device)


def embedding_optimizer_class(cfg: OptimizerConfig) -> tuple[type, dict]:
    """The optimizer applied in backward to embedding tables, and its arguments. TorchRec fuses it
    into the table-batched kernel, so no dense gradient of a whole table is ever made."""
    from torchrec.optim import RowWiseAdagrad

    if cfg.name == "rowwise_adagrad":
        return RowWiseAdagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "adagrad":
        return torch.optim.Adagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "adam":
        return torch.optim.Adam, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    return torch.optim.SGD, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}


def dense_optimizer(cfg: OptimizerConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    kinds = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adagrad": torch.optim.Adagrad,
        "sgd": torch.optim.SGD,
    }
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.name != "sgd":
        kwargs["eps"] = cfg.eps
    return kinds[cfg.name](params, **kwargs)


def embedding_collections(model: nn.Module) -> list[EmbeddingBagCollection]:
    return [m for m in model.modules() if isinstance(m, EmbeddingBagCollection)]


def sequence_collections(model: nn.Module) -> list[EmbeddingCollection]:
    """The unpooled tables (a history pooled by attention)."""
    return [m for m in model.modules() if isinstance(m, EmbeddingCollection)]


def table_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every embedding table's (rows, dim), pooled or not."""
    configs = [c for ebc in embedding_collections(model) for c in ebc.embedding_bag_configs()]
    configs += [c for ec in sequence_collections(model) for c in ec.embedding_configs()]
    return {c.name: (c.num_embeddings, c.embedding_dim) for c in configs}


def wrap(
    model: nn.Module,
    world: World,
    embedding_opt: OptimizerConfig,
    dense_opt: OptimizerConfig,
    plan: ShardingPlan | None = None,
    batch_size: int = 512,
) -> tuple[DistributedModelParallel, CombinedOptimizer, ShardingPlan]:
    """``model`` (embedding tables on the meta device) sharded by the planner's plan (or ``plan``),
    with the embedding optimizer fused into backward and ``dense_opt`` for everything else.

    Even on one process the wrap matters: unwrapped tables get dense gradients and train ~4x slower.
    """
    opt_class, opt_args = embedding_optimizer_class(embedding_opt)
    for collection in [*embedding_collections(model), *sequence_collections(model)]:
        apply_optimizer_in_backward(opt_class, collection.parameters(), opt_args)
    sharders: list = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]
    if plan is None:
        topology = TopologyFactory.create_topology(
            TrainerConfig(
                world_size=world.world_size, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size))
            ),
            kernel_config=KernelConfig(compute_device=world.device.type),
        )
        constraints = {
            c.name: ParameterConstraints(sharding_types=PLANNER_SHARDING_TYPES, compute_kernels=["fused"])
            for ebc in embedding_collections(model)
            for c in ebc.embedding_bag_configs()
        }
        constraints.update(
            {
                c.name: ParameterConstraints(sharding_types=SEQUENCE_SHARDING_TYPES, compute_kernels=["fused"])
                for ec in sequence_collections(model)
                for c in ec.embedding_configs()
            }
        )
        planner = EmbeddingShardingPlanner(
            topology=topology,
            batch_size=batch_size,
            constraints=constraints,
            storage_reservation=FixedPercentageStorageReservation(0.15),
        )
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    # alone, DDP's gradient buckets only copy: leave the dense part unwrapped
    with warnings.catch_warnings():
        # TorchRec 1.8 passes DDP's `broadcast_buffers`, which torch now calls deprecated
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        dmp = DistributedModelParallel(
            model, device=world.device, plan=plan, sharders=sharders, init_data_parallel=world.world_size > 1
        )
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: dense_optimizer(dense_opt, list(params)),
    )
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), plan


INIT_CHUNK_ROWS = 65536


@torch.no_grad()
def init_embeddings(model: nn.Module, seed: int) -> None:
    """Fill every embedding table with values that depend on (seed, table, row) only, however the
    tables are sharded: the same seed gives the same model on 1 process or 64 (TorchRec would
    draw each shard from its own rank's generator). Uniform(+-sqrt(1/rows)), TorchRec's default.

    Rows are drawn in chunks of INIT_CHUNK_ROWS from a generator seeded by (seed, table, chunk),
    so a rank only draws the chunks its shards overlap.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ShardedTensor, which torch says DTensor will replace
        tables = [
            (
                key,
                value.size() if isinstance(value, ShardedTensor) else value.shape,
                [(s.tensor, *s.metadata.shard_offsets) for s in value.local_shards()]
                if isinstance(value, ShardedTensor)
                else [(value, 0, 0)],
            )
            for key, value in model.state_dict().items()
            if (".embedding_bags." in key or ".embedding_collection.embeddings." in key) and key.endswith(".weight")
        ]
    for key, (rows, dim), pieces in tables:
        bound = math.sqrt(1.0 / rows)
        table = zlib.crc32(key.encode())
        for tensor, row0, col0 in pieces:
            n, width = tensor.shape
            for chunk in range(row0 // INIT_CHUNK_ROWS, -(-(row0 + n) // INIT_CHUNK_ROWS)):
                lo, hi = chunk * INIT_CHUNK_ROWS, min(rows, (chunk + 1) * INIT_CHUNK_ROWS)
                gen = torch.Generator().manual_seed((seed * 1_000_003 + table) * 100_003 + chunk)
                values = torch.empty(hi - lo, dim).uniform_(-bound, bound, generator=gen)
                a, b = max(lo, row0), min(hi, row0 + n)
                tensor[a - row0 : b - row0].copy_(values[a - lo : b - lo, col0 : col0 + width])
