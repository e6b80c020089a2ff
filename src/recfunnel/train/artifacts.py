"""A trained model as a self-contained folder that loads back on one process, without the data.

    RUN_DIR/model/
        model.pt          unsharded weights (plain tensors) + model kind
        config.yaml       the resolved run configuration
        manifest.json     the dataset's schema (features, cardinalities, labels)
        vocab/            raw value -> index, for encoding requests
        users.parquet     (two-tower) every user and its features
        items.parquet     (two-tower) every item and its features
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from recfunnel.config import RunConfig, config_from_dict
from recfunnel.data.schema import Manifest, load_manifest
from recfunnel.errors import RecfunnelError

__all__ = ["Trained", "build_model", "save_model", "load_trained", "MODEL_DIR"]

MODEL_DIR = "model"


def build_model(config: RunConfig, manifest: Manifest, device: torch.device | str | None = None) -> nn.Module:
    """The config's model for this dataset, embedding tables on ``device`` (``"meta"`` for DMP)."""
    from recfunnel.models.ranker import build_ranker
    from recfunnel.models.two_tower import build_two_tower

    device = torch.device(device) if device is not None else None
    if config.is_retrieval:
        return build_two_tower(manifest, config.model, device=device)
    return build_ranker(config.model_kind, manifest, config.model, device=device)


def save_model(folder: str | Path, config: RunConfig, manifest: Manifest, state: dict[str, torch.Tensor],
               data: str | Path) -> Path:
    """Write the model folder atomically (temp folder, then rename)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"model_kind": config.model_kind, "state_dict": state}, tmp / "model.pt")
    (tmp / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    manifest.save(tmp)
    data = Path(data)
    if (data / "vocab").is_dir():
        shutil.copytree(data / "vocab", tmp / "vocab")
    for table in ("users.parquet", "items.parquet"):
        if config.is_retrieval and (data / table).is_file():
            shutil.copy2(data / table, tmp / table)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


@dataclass
class Trained:
    config: RunConfig
    manifest: Manifest
    model: nn.Module  # in eval mode, on the CPU
    folder: Path

    @property
    def kind(self) -> str:
        return self.config.model_kind


def load_config_file(path: Path) -> RunConfig:
    return config_from_dict(RunConfig, yaml.safe_load(path.read_text()))


def load_trained(folder: str | Path) -> Trained:
    """A model folder (``RUN_DIR/model``) or a run folder holding one, loaded on the CPU."""
    folder = Path(folder)
    if (folder / MODEL_DIR / "model.pt").is_file():
        folder = folder / MODEL_DIR
    if not (folder / "model.pt").is_file():
        raise RecfunnelError(f"{folder}: no trained model (model.pt); is it a run folder of `recfunnel train`?")
    config = load_config_file(folder / "config.yaml")
    manifest = load_manifest(folder)
    saved = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    model = build_model(config, manifest, device="cpu")
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return Trained(config, manifest, model, folder)
