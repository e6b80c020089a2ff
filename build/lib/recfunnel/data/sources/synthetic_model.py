"""The known model behind ``recfunnel prepare synthetic``: Criteo-shaped rows and their labels.

Each row has ``dense`` log1p-count features (``int_*``), ``sparse`` single-hot ids (``cat_*``) and
``multi_hot`` lists of 1..``max_len`` ids (``multi_*``). Ids follow a Zipf law (id 1 is the most
frequent; ids are 1..cardinality-1, index 0 stays the unused OOV bucket). The label is drawn as::

    logit = bias + sum_d w_d * x_d                        dense (log1p of counts)
                 + sum_f effect_f[id_f]                   single-hot main effects
                 + sum_m mean(effect_m[ids_m])            multi-hot main effects (mean pooling)
                 + sum_(f,g) <u_f[id_f], u_g[id_g]>       a few latent pairwise interactions
    label ~ Bernoulli(sigmoid(logit))

The interactions are what a factorisation model (DLRM, DCNv2, DeepFM) can learn and logistic
regression cannot. Effects of rare ids shrink with their frequency, so most of the signal sits on
ids a model sees often enough to learn; ``bias`` is solved for the positive rate.
:meth:`GroundTruth.from_manifest` rebuilds the model, and :meth:`GroundTruth.probability` gives
the true probability of any rows read back from the shards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.rows import Rows
from recfunnel.errors import ConfigError, DataError

__all__ = ["CHUNK_ROWS", "GeneratorConfig", "GroundTruth", "parse_cardinality"]

CHUNK_ROWS = 1 << 18  # rows generated at once: bounds memory, and fixes the random streams per chunk

# Signal budget: variance of each part of the logit (exact under the id frequencies). Rare ids are what
# a model cannot learn from 240k rows, so an id's effect shrinks as sqrt(p / FREQUENT) below
# FREQUENT: at 240k training rows an id at FREQUENT is seen ~480 times.
SIGNAL = {"dense": 0.8, "single_hot": 0.8, "multi_hot": 0.3, "interactions": 0.8}
FREQUENT = 1 / 500


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything the ground truth and the rows depend on; the manifest stores it."""

    dense: int = 13
    sparse: int = 26
    multi_hot: int = 2
    max_len: int = 5
    cardinality: tuple[int, ...] = ()  # single-hot then multi-hot; () = the default mix (cardinalities())
    zipf_alpha: float = 1.5
    positive_rate: float = 0.35
    interactions: int = 4
    latent_dim: int = 2
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("dense", "sparse", "multi_hot", "interactions"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: {getattr(self, name)}, expected >= 0")
        if self.max_len < 1 or self.latent_dim < 1:
            raise ConfigError(f"--max-len {self.max_len} / --latent-dim {self.latent_dim}: expected >= 1")
        if self.zipf_alpha < 0:
            raise ConfigError(f"--zipf-alpha: {self.zipf_alpha}, expected >= 0 (0 = uniform ids)")
        if not 0.0 < self.positive_rate < 1.0:
            raise ConfigError(f"--positive-rate: {self.positive_rate}, expected in (0, 1)")
        if 2 * self.interactions > self.sparse:
            raise ConfigError(
                f"--interactions {self.interactions} needs {2 * self.interactions} single-hot "
                f"features, --sparse is {self.sparse}"
            )
        n = self.sparse + self.multi_hot
        if self.cardinality and len(self.cardinality) not in (1, n):
            raise ConfigError(
                f"--cardinality: {len(self.cardinality)} values, expected 1 or {n} "
                f"(--sparse {self.sparse} + --multi-hot {self.multi_hot})"
            )
        if any(c < 2 for c in self.cardinality):
            raise ConfigError(f"--cardinality: {list(self.cardinality)}, every value must be >= 2 (index 0 is OOV)")

    def cardinalities(self) -> list[int]:
        """Index count per sparse feature (single-hot, then multi-hot), OOV index 0 included."""
        n = self.sparse + self.multi_hot
        if len(self.cardinality) == 1:
            return list(self.cardinality) * n
        if self.cardinality:
            return list(self.cardinality)
        # Small tables (the interacting ones) up to moderate ones: learnable from ~240k rows.
        single = np.geomspace(3, 2_000, self.sparse) if self.sparse > 1 else np.full(self.sparse, 100.0)
        multi = np.geomspace(200, 2_000, self.multi_hot) if self.multi_hot > 1 else np.full(self.multi_hot, 500.0)
        return [int(round(c)) for c in list(single) + list(multi)]


def parse_cardinality(text: str | None) -> tuple[int, ...]:
    """``"1000"`` or ``"3,10,1000,..."`` -> a tuple of ints; None or "" -> () (the default mix)."""
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--cardinality: {text!r} is not an integer or a comma-separated list of integers") from None


class GroundTruth:
    """The model labels are drawn from. Every parameter follows from the config (and its seed)."""

    def __init__(self, config: GeneratorConfig):
        self.config = config
        rng = np.random.default_rng([config.seed, 0])
        self.cards = config.cardinalities()
        self.freqs = [_zipf(c, config.zipf_alpha) for c in self.cards]  # id -> probability, id 0 -> 0
        self.cdfs = [np.cumsum(f[1:]) for f in self.freqs]
        self.dense_means = np.exp(rng.uniform(np.log(0.5), np.log(200.0), config.dense))  # mean raw count
        self.dense_w = self._dense_weights(rng)
        self.effects = self._effects(rng)
        self.pairs = self._pairs()
        self.latent = self._latent(rng)
        self.bias = 0.0
        self.bias = self._solve_bias()

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> GroundTruth:
        """The ground truth of a dataset written by ``prepare_synthetic``."""
        record = manifest.extra["generator"]
        cfg = dict(record["config"], cardinality=tuple(record["config"]["cardinality"]))
        truth = cls(GeneratorConfig(**cfg))
        if not np.isclose(truth.bias, record["bias"], rtol=0, atol=1e-9):
            raise DataError(
                f"the dataset's generator (bias {record['bias']}) is not this version's "
                f"(bias {truth.bias}): regenerate it to compare against its ground truth"
            )
        return truth

    def _dense_weights(self, rng: np.random.Generator) -> np.ndarray:
        """Weights per unit of log1p(count): the dense part of the logit has variance SIGNAL['dense']."""
        sd = np.array([_log1p_geometric_sd(m) for m in self.dense_means])
        w = rng.normal(0.0, 1.0, self.config.dense) / sd
        return w * np.sqrt(SIGNAL["dense"] / max(float(np.sum((w * sd) ** 2)), 1e-12))

    def _effects(self, rng: np.random.Generator) -> list[np.ndarray]:
        s, m = self.config.sparse, self.config.multi_hot
        # A mean of L iid ids has 1/L of one id's variance; L is uniform on 1..max_len.
        mean_inv_len = float(np.mean(1.0 / np.arange(1, self.config.max_len + 1)))
        out = []
        for f, freq in enumerate(self.freqs):
            share = SIGNAL["single_hot"] / max(s, 1) if f < s else SIGNAL["multi_hot"] / max(m, 1) / mean_inv_len
            effect = rng.normal(0.0, 1.0, len(freq)) * _shrink(freq)
            effect[0] = 0.0
            out.append(effect * _scale_to(share, _weighted_var(effect, freq)))
        return out

    def _pairs(self) -> list[tuple[int, int]]:
        """Interacting single-hot features: the lowest-cardinality ones, paired in order.

        Small tables make every id combination frequent, so the interactions are learnable."""
        order = sorted(range(self.config.sparse), key=lambda f: (self.cards[f], f))[: 2 * self.config.interactions]
        return [(order[2 * i], order[2 * i + 1]) for i in range(self.config.interactions)]

    def _latent(self, rng: np.random.Generator) -> dict[int, np.ndarray]:
        """Latent vectors (cardinality, k) whose pairwise dot products have variance per pair as budgeted."""
        k = self.config.latent_dim
        per_pair = SIGNAL["interactions"] / max(len(self.pairs), 1)
        out = {}
        for f, g in self.pairs:
            u, v = (rng.normal(0.0, 1.0, (self.cards[h], k)) * _shrink(self.freqs[h])[:, None] for h in (f, g))
            u[0], v[0] = 0.0, 0.0
            # Ids of f and g are independent, so var(<u, v>) = tr(M_u M_v) - (mu_u . mu_v)^2, with M the
            # second moments and mu the means under the id frequencies; it scales as (scale of u and v)^4.
            mu_u, mu_v = self.freqs[f] @ u, self.freqs[g] @ v
            m_u, m_v = (u * self.freqs[f][:, None]).T @ u, (v * self.freqs[g][:, None]).T @ v
            var = float(np.trace(m_u @ m_v) - (mu_u @ mu_v) ** 2)
            scale = _scale_to(per_pair, var) ** 0.5
            out[f], out[g] = u * scale, v * scale
        return out

    def _solve_bias(self) -> float:
        """The bias whose mean probability is ``positive_rate`` on a fixed calibration sample."""
        rows = self.features(np.random.default_rng([self.config.seed, 2]), 1 << 16)
        z = self.logit(rows)
        lo, hi = -30.0, 30.0
        for _ in range(60):  # bisection: the mean of sigmoid(b + z) increases with b
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _sigmoid(mid + z).mean() < self.config.positive_rate else (lo, mid)
        return (lo + hi) / 2

    def features(self, rng: np.random.Generator, n: int) -> Rows:
        """``n`` rows of features drawn from ``rng`` (labels (n, 0))."""
        cfg = self.config
        counts = rng.geometric(1.0 / (1.0 + self.dense_means), (n, cfg.dense)) - 1
        dense = np.log1p(counts).astype(np.float32)
        s = cfg.sparse
        sparse = np.empty((n, s), np.int64)
        for f in range(s):
            sparse[:, f] = self._ids(f, rng.random(n))
        lengths = rng.integers(1, cfg.max_len + 1, (n, cfg.multi_hot), dtype=np.int32)
        values = [self._ids(s + j, rng.random(int(lengths[:, j].sum()))) for j in range(cfg.multi_hot)]
        return Rows(dense, sparse, lengths, values, np.zeros((n, 0), np.float32))

    def _ids(self, f: int, u: np.ndarray) -> np.ndarray:
        """Zipf ids in 1..cardinality-1 from uniforms ``u`` (inverse CDF)."""
        cdf = self.cdfs[f]
        return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1).astype(np.int64) + 1

    def logit(self, rows: Rows) -> np.ndarray:
        """float64 (n,): the true logit of each row, from its features only."""
        n, s = len(rows), self.config.sparse
        z = np.full(n, self.bias)
        for d in range(self.config.dense):  # column by column: the same bits whatever the batch size
            z += self.dense_w[d] * rows.dense[:, d].astype(np.float64)
        for f in range(s):
            z += self.effects[f][rows.sparse[:, f]]
        for j in range(self.config.multi_hot):
            lengths = rows.mh_lengths[:, j]
            owner = np.repeat(np.arange(n), lengths)
            sums = np.bincount(owner, weights=self.effects[s + j][rows.mh_values[j]], minlength=n)
            z += sums / np.maximum(lengths, 1)
        for f, g in self.pairs:
            z += np.einsum("ij,ij->i", self.latent[f][rows.sparse[:, f]], self.latent[g][rows.sparse[:, g]])
        return z

    def probability(self, rows: Rows) -> np.ndarray:
        """float64 (n,): the true click probability of each row."""
        return _sigmoid(self.logit(rows))

    def sample(self, chunk: int, n: int) -> tuple[Rows, np.ndarray]:
        """Chunk ``chunk`` of the dataset (``n`` rows, labels (n, 1)) and the rows' true probabilities."""
        rng = np.random.default_rng([self.config.seed, 1, chunk])
        rows = self.features(rng, n)
        p = self.probability(rows)
        rows.labels = (rng.random(n) < p).astype(np.float32)[:, None]
        return rows, p

    def describe(self) -> dict[str, Any]:
        """The generator record for ``manifest.extra['generator']``."""
        return {
            "config": asdict(self.config),
            "bias": self.bias,
            "pairs": [list(p) for p in self.pairs],
            "signal_variance": SIGNAL,
            "frequent_id_probability": FREQUENT,
            "chunk_rows": CHUNK_ROWS,
            "cardinalities": self.cards,
            "rebuild": "recfunnel.data.sources.synthetic_model.GroundTruth.from_manifest(manifest)",
        }


def _zipf(cardinality: int, alpha: float) -> np.ndarray:
    """Probability of each index (cardinality,): index 0 gets 0, id k >= 1 gets ~ k**-alpha."""
    w = np.zeros(cardinality)
    w[1:] = np.arange(1, cardinality, dtype=np.float64) ** -alpha
    return w / w.sum()


def _weighted_var(values: np.ndarray, weights: np.ndarray) -> float:
    """Variance of ``values`` when index i is drawn with probability ``weights[i]``."""
    mean = weights @ values
    return float(weights @ (values - mean) ** 2)


def _scale_to(target: float, variance: float) -> float:
    """The factor that turns ``variance`` into ``target`` (as a standard deviation ratio); 0 when
    there is no variance to scale (a feature with one id: a constant is no signal)."""
    return float(np.sqrt(target / variance)) if variance > 1e-12 else 0.0


def _shrink(freq: np.ndarray) -> np.ndarray:
    """Effect scale per id: 1 for ids at least FREQUENT, sqrt(p / FREQUENT) for rarer ones."""
    return np.sqrt(np.minimum(freq / FREQUENT, 1.0))


def _log1p_geometric_sd(mean: float) -> float:
    """Standard deviation of log1p(c) for c geometric on {0, 1, ...} with the given mean."""
    q = mean / (1.0 + mean)  # P(c >= k + 1 | c >= k)
    k = np.arange(0, int(60 * (1 + mean)))
    pk = (1 - q) * q**k
    x = np.log1p(k)
    mu = (pk * x).sum()
    return float(np.sqrt(max((pk * x * x).sum() - mu * mu, 1e-12)))


def _sigmoid(z: np.ndarray | float) -> Any:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z)))
