"""Typed run configuration: dataclasses validated on load, read from YAML, overridden by dotted keys.

    config = load_config("dlrm", file="my.yaml", overrides=["train.batch_size=4096", "model.dropout=0.2"])

Defaults for each model live in ``configs/<model>.yaml`` (shipped inside the package); a user's
``--config FILE`` is applied on top, then each ``--set key=value``. Every problem names the field
and the bad value (``train.batch_size: expected an integer >= 1, got 'big'``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from recfunnel.errors import ConfigError

__all__ = [
    "MODELS",
    "HeadConfig",
    "ModelConfig",
    "RetrievalConfig",
    "RankingConfig",
    "OptimizerConfig",
    "TrainConfig",
    "EvalConfig",
    "TrackingConfig",
    "TableSharding",
    "ShardingConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
    "flatten",
    "with_overrides",
    "check",
]

MODELS = ("two-tower", "dlrm", "dcnv2", "deepfm")
HEAD_KINDS = ("binary", "regression", "multiclass")


def check(ok: bool, name: str, expected: str, value: Any) -> None:
    """Raise :class:`ConfigError` ``"<name>: expected <expected>, got <value>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")


@dataclass
class HeadConfig:
    """One prediction head of a ranker: a label of the dataset and how to learn it."""

    label: str
    kind: str = "binary"  # binary (BCE) | regression (MSE) | multiclass (cross-entropy)
    weight: float = 1.0  # weight of this head's loss in the total
    classes: int = 0  # multiclass only: number of classes (labels are 0..classes-1)

    def validate(self, at: str) -> None:
        check(self.kind in HEAD_KINDS, f"{at}.kind", f"one of {HEAD_KINDS}", self.kind)
        check(self.weight >= 0, f"{at}.weight", "a number >= 0", self.weight)
        check(
            self.kind != "multiclass" or self.classes >= 2,
            f"{at}.classes",
            "an integer >= 2 for multiclass",
            self.classes,
        )

    @property
    def outputs(self) -> int:
        return self.classes if self.kind == "multiclass" else 1


@dataclass
class ModelConfig:
    embedding_dim: int = 32
    features: list[str] | None = None  # sparse features to use; None = all of the dataset's
    dense_features: list[str] | None = None  # dense features to use; None = all
    multi_hot_pooling: str = "mean"  # mean | sum
    dropout: float = 0.0
    # rankers
    bottom_mlp: list[int] = field(default_factory=lambda: [64])  # dense arch; its output is embedding_dim
    top_mlp: list[int] = field(default_factory=lambda: [256, 128])  # over arch, before the heads
    cross_layers: int = 3  # dcnv2
    cross_low_rank: int = 0  # dcnv2: 0 = full-rank cross layers, else the rank
    heads: list[HeadConfig] = field(default_factory=lambda: [HeadConfig("label")])
    # two-tower
    tower_mlp: list[int] = field(default_factory=lambda: [64])  # last entry = output embedding size
    score: str = "dot"  # dot | cosine
    user_features: list[str] | None = None  # None = the user id + the dataset's user features
    item_features: list[str] | None = None  # None = the item id + the dataset's item features
    history_recent: int = 5  # the latest N of the history also pooled apart (same table); 0 = not
    history_pooling: str = "mean"  # mean (bags) | attention (learned query and recency over the items)
    share_item_table: bool = True  # the history looked up in the item id table (mean pooling only)

    def validate(self) -> None:
        check(self.embedding_dim >= 1, "model.embedding_dim", "an integer >= 1", self.embedding_dim)
        check(
            self.multi_hot_pooling in ("mean", "sum"), "model.multi_hot_pooling", "mean or sum", self.multi_hot_pooling
        )
        check(0 <= self.dropout < 1, "model.dropout", "a number in [0, 1)", self.dropout)
        for name in ("bottom_mlp", "top_mlp", "tower_mlp"):
            sizes = getattr(self, name)
            check(all(s >= 1 for s in sizes), f"model.{name}", "a list of layer sizes >= 1", sizes)
        check(len(self.tower_mlp) >= 1, "model.tower_mlp", "at least one layer", self.tower_mlp)
        check(self.cross_layers >= 1, "model.cross_layers", "an integer >= 1", self.cross_layers)
        check(self.cross_low_rank >= 0, "model.cross_low_rank", "an integer >= 0", self.cross_low_rank)
        check(self.score in ("dot", "cosine"), "model.score", "dot or cosine", self.score)
        check(self.history_recent >= 0, "model.history_recent", "an integer >= 0", self.history_recent)
        check(
            self.history_pooling in ("mean", "attention"),
            "model.history_pooling",
            "mean or attention",
            self.history_pooling,
        )
        check(len(self.heads) >= 1, "model.heads", "at least one head", self.heads)
        for i, head in enumerate(self.heads):
            head.validate(f"model.heads[{i}]")


@dataclass
class RetrievalConfig:
    """How the two-tower model learns: in-batch sampled softmax (default) or pointwise BCE."""

    loss: str = "softmax"  # softmax (positives only; negatives from the batch) | bce (labelled pairs)
    temperature: float = 0.1  # softmax logits are scores / temperature
    logq_correction: bool = True  # subtract log(sampling probability), estimated from the stream
    remove_accidental_hits: bool = True  # an item that is also the row's positive is not its negative
    extra_negatives: int = 0  # items sampled per batch on top of the in-batch ones
    negative_sampler: str = "uniform"  # uniform | popularity
    positives_only: bool = True  # softmax: train on rows whose label > 0

    def validate(self) -> None:
        check(self.loss in ("softmax", "bce"), "retrieval.loss", "softmax or bce", self.loss)
        check(self.temperature > 0, "retrieval.temperature", "a number > 0", self.temperature)
        check(self.extra_negatives >= 0, "retrieval.extra_negatives", "an integer >= 0", self.extra_negatives)
        check(
            self.negative_sampler in ("uniform", "popularity"),
            "retrieval.negative_sampler",
            "uniform or popularity",
            self.negative_sampler,
        )


@dataclass
class RankingConfig:
    """A ranker trained on a retriever's candidates (``recfunnel train --retriever TWO_TOWER_RUN``)."""

    retriever: str = ""  # a two-tower run; "": train on the dataset's own rows
    candidates: int = 200  # each list's length: the retriever's top N (the funnel's default candidates)
    loss: str = "listwise"  # listwise (softmax over each candidate list) | bce (pointwise)
    val_users: float = 0.1  # share of the lists' users held out to choose the epoch
    id_features: bool = True  # read the user id, item id and history embeddings (configs/two-stage.yaml: false)

    def validate(self) -> None:
        check(self.candidates >= 2, "ranking.candidates", "an integer >= 2", self.candidates)
        check(self.loss in ("listwise", "bce"), "ranking.loss", "listwise or bce", self.loss)
        check(0 < self.val_users < 1, "ranking.val_users", "a number in (0, 1)", self.val_users)


@dataclass
class OptimizerConfig:
    name: str
    lr: float
    weight_decay: float = 0.0
    eps: float = 1e-8

    def validate(self, at: str, allowed: tuple[str, ...]) -> None:
        check(self.name in allowed, f"{at}.name", f"one of {allowed}", self.name)
        check(self.lr > 0, f"{at}.lr", "a number > 0", self.lr)
        check(self.weight_decay >= 0, f"{at}.weight_decay", "a number >= 0", self.weight_decay)


EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "adam", "sgd")
DENSE_OPTIMIZERS = ("adam", "adamw", "adagrad", "sgd")


@dataclass
class TrainConfig:
    batch_size: int = 1024  # rows per step on each process
    epochs: int = 10  # upper bound; early stopping may end sooner
    embedding_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("rowwise_adagrad", 0.05))
    dense_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("adam", 1e-3))
    early_stopping_metric: str = "auto"  # a validation metric (auc, recall_at_100, ...); auto: by model
    early_stopping_patience: int = 2  # epochs without improvement before stopping; 0 = never stop early
    seed: int = 42
    num_workers: int = 0  # loader worker processes
    log_every: int = 50  # steps between logged training metrics
    max_steps: int = 0  # stop after this many steps (0 = no limit); for smoke tests and benchmarks
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    window_blocks: int = 8  # blocks of rows shuffled together by the loader (memory: window_blocks * block rows)
    checkpoint_every: int = (
        1000  # steps between resumable checkpoints (also one at each epoch end); 0 = epoch ends only
    )
    keep_checkpoints: int = 2  # newest resumable checkpoints kept
    sampled_negatives: int = 0  # rankers on interaction data: random items per row as label-0 rows (train and eval)
    negative_sampling: str = "uniform"  # uniform | popularity (items drawn by count^0.75)

    def validate(self) -> None:
        check(self.batch_size >= 1, "train.batch_size", "an integer >= 1", self.batch_size)
        check(self.epochs >= 1, "train.epochs", "an integer >= 1", self.epochs)
        self.embedding_optimizer.validate("train.embedding_optimizer", EMBEDDING_OPTIMIZERS)
        self.dense_optimizer.validate("train.dense_optimizer", DENSE_OPTIMIZERS)
        check(
            self.early_stopping_patience >= 0,
            "train.early_stopping_patience",
            "an integer >= 0",
            self.early_stopping_patience,
        )
        check(self.num_workers >= 0, "train.num_workers", "an integer >= 0", self.num_workers)
        check(self.log_every >= 1, "train.log_every", "an integer >= 1", self.log_every)
        check(self.max_steps >= 0, "train.max_steps", "an integer >= 0", self.max_steps)
        check(self.threads >= 0, "train.threads", "an integer >= 0", self.threads)
        check(self.window_blocks >= 1, "train.window_blocks", "an integer >= 1", self.window_blocks)
        check(self.checkpoint_every >= 0, "train.checkpoint_every", "an integer >= 0", self.checkpoint_every)
        check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "an integer >= 1", self.keep_checkpoints)
        check(self.sampled_negatives >= 0, "train.sampled_negatives", "an integer >= 0", self.sampled_negatives)
        check(
            self.negative_sampling in ("uniform", "popularity"),
            "train.negative_sampling",
            "uniform or popularity",
            self.negative_sampling,
        )


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20, 100])  # cut-offs of retrieval metrics
    baselines: bool = True  # most-popular + EASE (retrieval), logistic regression (ranking)
    ease_l2: float = 500.0
    batch_size: int = 8192

    def validate(self) -> None:
        check(len(self.ks) >= 1 and all(k >= 1 for k in self.ks), "eval.ks", "a list of integers >= 1", self.ks)
        check(self.ease_l2 > 0, "eval.ease_l2", "a number > 0", self.ease_l2)
        check(self.batch_size >= 1, "eval.batch_size", "an integer >= 1", self.batch_size)


SHARDING_TYPES = ("auto", "table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel")
COMPUTE_KERNELS = ("auto", "fused", "dense")


@dataclass
class TableSharding:
    """How one embedding table is split over the processes (``table: "*"``: every table not named)."""

    table: str
    type: str = "auto"  # auto (the planner decides) | table_wise | row_wise | column_wise | ...
    kernel: str = "auto"  # auto | fused (optimizer fused into the lookup kernel) | dense

    def validate(self, at: str) -> None:
        check(self.type in SHARDING_TYPES, f"{at}.type", f"one of {SHARDING_TYPES}", self.type)
        check(self.kernel in COMPUTE_KERNELS, f"{at}.kernel", f"one of {COMPUTE_KERNELS}", self.kernel)


@dataclass
class ShardingConfig:
    """Empty: TorchRec's planner chooses every table's sharding. Otherwise each listed table gets
    its type and kernel and unlisted ones are spread table-wise over the ranks."""

    tables: list[TableSharding] = field(default_factory=list)

    def validate(self) -> None:
        for i, t in enumerate(self.tables):
            t.validate(f"sharding.tables[{i}]")

    @property
    def forced(self) -> bool:
        return any(t.type != "auto" or t.kernel != "auto" for t in self.tables)


@dataclass
class TrackingConfig:
    experiment: str = "recfunnel"
    run_name: str | None = None
    register_as: str | None = None  # register the final model under this name
    log_checkpoints: bool = True


@dataclass
class RunConfig:
    model_kind: str
    model: ModelConfig = field(default_factory=ModelConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)

    def __post_init__(self) -> None:
        check(self.model_kind in MODELS, "model_kind", f"one of {MODELS}", self.model_kind)
        self.sharding.validate()
        self.model.validate()
        self.retrieval.validate()
        self.ranking.validate()
        self.train.validate()
        self.eval.validate()

    @property
    def is_retrieval(self) -> bool:
        return self.model_kind == "two-tower"

    @property
    def two_stage(self) -> bool:
        """A ranker trained on a retriever's candidate lists."""
        return not self.is_retrieval and bool(self.ranking.retriever)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(tp: Any, value: Any, name: str) -> Any:
    """``value`` as type ``tp`` (a dataclass, list[...], X | None, int, float, str, bool)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, name)
    if origin is list:
        check(isinstance(value, list), name, "a list", value)
        return [_convert(typing.get_args(tp)[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        check(isinstance(value, dict), name, "a mapping of fields", value)
        return config_from_dict(tp, value, name)
    if tp is bool:
        check(isinstance(value, bool), name, "true or false", value)
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), name, "a number", value)
        return float(value)
    if tp is str:
        check(isinstance(value, str), name, "a string", value)
        return value
    raise TypeError(f"unsupported config type {tp}")


def config_from_dict(cls: type, data: dict[str, Any], at: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, naming any unknown or mistyped field."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{at}.{key}" if at else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown field{hint}")
        kwargs[key] = _convert(hints[key], value, where)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{at or 'config'}: {e}") from None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (model:, train:, ...), got {type(data).__name__}")
    return data


def _override(data: dict[str, Any], item: str) -> dict[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.batch_size=4096")
    value = yaml.safe_load(raw) if raw.strip() else None
    node: dict[str, Any] = {}
    root = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return _merge(data, root)


def default_config_text(model_kind: str) -> str:
    if model_kind not in MODELS:
        raise ConfigError(f"model: expected one of {MODELS}, got {model_kind!r}")
    return resources.files("recfunnel").joinpath("configs", f"{model_kind}.yaml").read_text()


def with_overrides(data: dict[str, Any], overrides: Sequence[str], cls: type | None = None) -> Any:
    """A config dict (e.g. a run's ``config.yaml``) with ``key=value`` overrides applied, as ``cls``
    (default :class:`RunConfig`)."""
    for item in overrides:
        data = _override(data, item)
    return config_from_dict(cls or RunConfig, data)


def load_config(model_kind: str, file: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The packaged defaults of ``model_kind``, then ``file``, then each ``key=value`` override. A
    ranker given a retriever (``ranking.retriever``) gets ``configs/two-stage.yaml`` after its defaults."""
    layers = [_read_yaml(default_config_text(model_kind), f"configs/{model_kind}.yaml")]
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        layers.append(_read_yaml(path.read_text(), str(path)))
    data = _layered(layers, overrides)
    if model_kind != "two-tower" and (data.get("ranking") or {}).get("retriever"):
        # a ranker on a retriever's candidate lists: its own defaults between the model's and the user's
        text = resources.files("recfunnel").joinpath("configs", "two-stage.yaml").read_text()
        data = _layered([layers[0], _read_yaml(text, "configs/two-stage.yaml"), *layers[1:]], overrides)
    data["model_kind"] = model_kind
    return config_from_dict(RunConfig, data)


def _layered(layers: list[dict[str, Any]], overrides: Sequence[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for layer in layers:
        data = _merge(data, layer)
    for item in overrides:
        data = _override(data, item)
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"batch_size": 8}}`` -> ``{"train.batch_size": 8}`` (lists kept whole)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
