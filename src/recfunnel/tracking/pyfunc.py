"""A trained model folder as an MLflow pyfunc: raw feature values in, predictions out.

    model = mlflow.pyfunc.load_model(tracker.model_uri)
    model.predict(pd.DataFrame({"int_0": [3], "cat_0": [7], "multi_0": ["1|4"]}))   # ranker
        -> one column per head: binary -> P(label = 1), regression -> the value,
           multiclass -> predicted class, plus "<label>_prob_<k>" per class
           (a second head of the same label is named "<label>_<kind>")
    model.predict(pd.DataFrame({"user_id": [7, 63], "item_id": [22, 999]}))        # two-tower
        -> "score": dot of the user and item embeddings (NaN for an id the model never saw)

Two-tower requests need only raw ids: the towers' features come from the folder's users.parquet /
items.parquet, as during training (other columns are ignored). Ranker requests need a raw value for
every feature the ranker reads (a missing column raises DataError naming it; a missing value is
OOV / 0). Nothing here depends on training code, only on the model folder.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from recfunnel.data.format.catalog import Catalog
from recfunnel.data.format.request_encoder import RequestEncoder
from recfunnel.data.format.vocab import Vocab
from recfunnel.errors import DataError
from recfunnel.store.model import Trained, load_trained

__all__ = ["RecfunnelPyfunc", "predict_frame", "example_request"]


class RecfunnelPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps ``load_trained(context.artifacts["model"])``; see the module docstring for the columns."""

    def load_context(self, context: Any) -> None:
        self._load(context.artifacts["model"])

    def _load(self, folder: str) -> None:
        self.trained = load_trained(folder)
        self.encoder = RequestEncoder(self.trained.manifest, self.trained.folder)
        self.catalogs = None
        if self.trained.config.is_retrieval:
            manifest = self.trained.manifest
            self.catalogs = {role: Catalog.load(self.trained.folder, manifest, role) for role in ("user", "item")}

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return predict_frame(self, pd.DataFrame(model_input))


def predict_frame(model: RecfunnelPyfunc, df: pd.DataFrame) -> pd.DataFrame:
    """Predictions for the rows of ``df`` (same index) from a loaded :class:`RecfunnelPyfunc`."""
    with torch.no_grad():
        if model.catalogs is not None:
            return _score_pairs(model, df)
        return _rank(model, df)


def _rank(model: RecfunnelPyfunc, df: pd.DataFrame) -> pd.DataFrame:
    """Ranker heads for rows of raw features: logits (n, outputs) -> one column per head."""
    net, manifest = model.trained.model, model.trained.manifest
    dense_names = [manifest.dense[i].name for i in net.dense_index.tolist()]
    needed, kjt = model.encoder.encode(df, net.sparse_keys, dense_names)
    dense = torch.zeros((len(df), len(manifest.dense)), dtype=torch.float32)  # the ranker picks its columns
    dense[:, net.dense_index] = needed
    logits = net(dense, kjt)
    out, start = {}, 0
    for head in model.trained.config.model.heads:
        part = logits[:, start : start + head.outputs]
        start += head.outputs
        name = head.label if head.label not in out else f"{head.label}_{head.kind}"  # two heads, one label
        if head.kind == "binary":
            out[name] = torch.sigmoid(part[:, 0]).numpy()
        elif head.kind == "regression":
            out[name] = part[:, 0].numpy()
        else:
            probs = torch.softmax(part, dim=1).numpy()
            out[name] = probs.argmax(axis=1)
            out.update({f"{name}_prob_{k}": probs[:, k] for k in range(head.outputs)})
    return pd.DataFrame(out, index=df.index)


def _score_pairs(model: RecfunnelPyfunc, df: pd.DataFrame) -> pd.DataFrame:
    """Two-tower score of each (user_id, item_id) row: float (n,), NaN where an id is unknown."""
    net, manifest = model.trained.model, model.trained.manifest
    rows = {}
    for role in ("user", "item"):
        column = f"{role}_id"
        if column not in df.columns:
            raise DataError(
                f"request: no column {column!r} (a two-tower model scores user_id, item_id pairs; "
                f"got {list(df.columns)})"
            )
        index = model.encoder.indices(manifest.roles[role], df[column])
        rows[role] = model.catalogs[role].positions_of(index)
    known = (rows["user"] >= 0) & (rows["item"] >= 0)
    score = np.full(len(df), np.nan, np.float32)
    if known.any():
        embedded = []
        for role in ("user", "item"):
            dense, kjt = model.catalogs[role].inputs(rows[role][known], *net.inputs(role))
            embedded.append(net.embed(role, dense, kjt))
        score[known] = (embedded[0] * embedded[1]).sum(dim=1).numpy()
    return pd.DataFrame({"score": score}, index=df.index)


def example_request(trained: Trained, rows: int = 2) -> pd.DataFrame:
    """A small valid request for ``trained``, logged with the model as its example."""
    folder, manifest = trained.folder, trained.manifest
    if trained.config.is_retrieval:
        users = pd.read_parquet(folder / "users.parquet", columns=["user_id"])["user_id"][:rows]
        items = pd.read_parquet(folder / "items.parquet", columns=["item_id"])["item_id"][:rows]
        n = min(len(users), len(items))
        return pd.DataFrame({"user_id": users.to_numpy()[:n], "item_id": items.to_numpy()[:n]})
    frame: dict[str, Any] = {f.name: [0.0] * rows for f in manifest.dense}
    for f in manifest.sparse:
        value: Any = 1
        vocab = f.vocab or f.name
        if f.encoding == "vocab" and (folder / "vocab" / f"{vocab}.parquet").is_file():
            value = Vocab.load(folder / "vocab", vocab).decode(np.array([min(1, f.cardinality - 1)]))[0]
            value = value.item() if hasattr(value, "item") else value
        frame[f.name] = [[value] if f.multi_hot else value] * rows
    return pd.DataFrame(frame)
