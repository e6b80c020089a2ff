"""A trained model as a self-contained folder that loads back on one process, without the data
(the layout is in :mod:`recfunnel.store`).

    save_model(run / "model", config, manifest, state_dict, data="data/ml-100k")
    trained = load_trained(run)          # a run folder or its model folder
    trained.model(dense, kjt)            # in eval mode, on the CPU
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from recfunnel.config import RunConfig, config_from_dict
from recfunnel.data.format.list_features import NEIGHBOURS
from recfunnel.data.format.manifest import Manifest, load_manifest
from recfunnel.errors import RecfunnelError
from recfunnel.files import atomic_output_dir
from recfunnel.models.ranker import build_ranker
from recfunnel.models.two_tower import build_two_tower
from recfunnel.store.interactions import save_interactions

__all__ = ["MODEL_DIR", "Trained", "build_model", "save_model", "load_trained", "model_folder", "model_digest"]

MODEL_DIR = "model"


def build_model(config: RunConfig, manifest: Manifest, device: torch.device | str | None = None) -> nn.Module:
    """The config's model for this dataset, embedding tables on ``device`` (``"meta"`` for DMP)."""
    device = torch.device(device) if device is not None else None
    if config.is_retrieval:
        return build_two_tower(manifest, config.model, device=device)
    model = config.model
    if config.two_stage and not config.ranking.id_features and model.features is None:
        # one list per user is too little to learn an embedding per user or item id from: they
        # overfit in an epoch or two (MovieLens 100k), and the retriever's score and the profile
        # affinity already carry what the ids know
        ids = {manifest.roles.get(role) for role in ("user", "item", "history")}
        model = dataclasses.replace(model, features=[key for key in manifest.sparse_keys if key not in ids])
    return build_ranker(config.model_kind, manifest, model, device=device)


def save_model(
    folder: str | Path, config: RunConfig, manifest: Manifest, state: dict[str, torch.Tensor], data: str | Path
) -> Path:
    """Write the model folder from the weights ``state`` and the dataset ``data`` it trained on,
    atomically (a temp folder renamed into place, replacing an older one only once complete)."""
    data = Path(data)
    with atomic_output_dir(folder, overwrite=True) as tmp:
        torch.save({"model_kind": config.model_kind, "state_dict": state}, tmp / "model.pt")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        manifest.save(tmp)
        if (data / "vocab").is_dir():
            shutil.copytree(data / "vocab", tmp / "vocab")
        for table in ("users.parquet", "items.parquet"):
            # a two-stage ranker reads item features only the candidate lists have (popularity)
            if (config.is_retrieval or config.two_stage) and (data / table).is_file():
                shutil.copy2(data / table, tmp / table)
        if config.two_stage and (data / NEIGHBOURS).is_file():
            shutil.copy2(data / NEIGHBOURS, tmp / NEIGHBOURS)
        if manifest.kind == "interactions":
            save_interactions(tmp, data, manifest)
    return Path(folder)


@dataclass
class Trained:
    config: RunConfig
    manifest: Manifest
    model: nn.Module  # in eval mode, on the CPU
    folder: Path  # the model folder

    @property
    def kind(self) -> str:
        return self.config.model_kind


def model_folder(folder: str | Path) -> Path:
    """The model folder of a run folder, or ``folder`` itself when it is a model folder."""
    folder = Path(folder)
    if (folder / MODEL_DIR / "model.pt").is_file():
        folder = folder / MODEL_DIR
    if not (folder / "model.pt").is_file():
        raise RecfunnelError(f"{folder}: no trained model (model.pt); is it a run folder of `recfunnel train`?")
    return folder


def load_trained(folder: str | Path) -> Trained:
    """A model folder (``RUN_DIR/model``) or a run folder holding one, loaded on the CPU."""
    folder = model_folder(folder)
    config = config_from_dict(RunConfig, yaml.safe_load((folder / "config.yaml").read_text()))
    manifest = load_manifest(folder)
    saved = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    model = build_model(config, manifest, device="cpu")
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as e:  # e.g. saved by a release whose model had other parts
        lines = str(e).splitlines()  # torch's first line only says loading failed; the second says what
        first = lines[1].strip() if len(lines) > 1 else str(e)
        raise RecfunnelError(
            f"{folder / 'model.pt'}: its weights do not fit the model its config builds ({first}); retrain it"
        ) from None
    model.eval()
    return Trained(config, manifest, model, folder)


def model_digest(folder: str | Path) -> str:
    """The first 16 hex digits of model.pt's SHA-256: which weights a model folder holds (the same
    bytes wherever they were copied or downloaded to), e.g. to tie an index to the model it indexes."""
    digest = hashlib.sha256()
    with open(model_folder(folder) / "model.pt", "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]
