"""Typed configs: every shipped YAML loads; bad fields are named with their bad value."""

from pathlib import Path

import pytest

from recfunnel.config import MODELS, RunConfig, flatten, load_config
from recfunnel.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_shipped_config_loads_and_there_is_one_per_model():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted([*MODELS, "two-stage"])
    for model in MODELS:
        config = load_config(model)
        assert isinstance(config, RunConfig) and config.model_kind == model


def test_a_ranker_given_a_retriever_gets_the_two_stage_defaults_below_the_users_own(tmp_path):
    plain = load_config("dlrm")
    assert not plain.two_stage and plain.ranking.id_features and plain.train.epochs == 10
    two_stage = load_config("dlrm", None, ["ranking.retriever=runs/tt"])
    assert two_stage.two_stage and not two_stage.ranking.id_features and two_stage.train.epochs == 20
    assert two_stage.model.top_mlp == plain.model.top_mlp  # the model's own defaults stay
    file = tmp_path / "mine.yaml"
    file.write_text("train:\n  epochs: 3\n")
    mine = load_config("deepfm", file, ["ranking.retriever=runs/tt", "ranking.loss=bce"])
    assert mine.train.epochs == 3 and mine.ranking.loss == "bce" and not mine.ranking.id_features
    assert not load_config("two-tower", None, ["ranking.retriever=x"]).two_stage


def test_file_then_dotted_overrides_apply_in_order(tmp_path):
    file = tmp_path / "mine.yaml"
    file.write_text("train:\n  batch_size: 64\n  epochs: 3\nmodel:\n  top_mlp: [8]\n")
    config = load_config("dlrm", file, ["train.epochs=5", "model.dropout=0.25", "retrieval.extra_negatives=7"])
    assert (config.train.batch_size, config.train.epochs) == (64, 5)
    assert config.model.top_mlp == [8] and config.model.dropout == 0.25
    assert config.retrieval.extra_negatives == 7
    assert config.model.bottom_mlp == load_config("dlrm").model.bottom_mlp  # untouched defaults stay
    assert flatten(config.to_dict())["train.batch_size"] == 64


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", "train.batch_size: expected an integer >= 1, got 0"),
        ("train.batch_size=big", "train.batch_size: expected an integer, got 'big'"),
        ("train.batchsize=8", "train.batchsize: unknown field (did you mean 'batch_size'?)"),
        ("model.score=l2", "model.score: expected dot or cosine, got 'l2'"),
        ("model.dropout=1.5", "model.dropout: expected a number in [0, 1), got 1.5"),
        ("retrieval.temperature=0", "retrieval.temperature: expected a number > 0, got 0.0"),
        ("train.dense_optimizer.name=lbfgs", "train.dense_optimizer.name: expected one of"),
        ("model.heads=[{label: y, kind: multiclass}]", "model.heads[0].classes: expected an integer >= 2"),
        ("model.top_mlp=[64, -1]", "model.top_mlp: expected a list of layer sizes >= 1"),
        ("train", "--set 'train': expected key=value"),
    ],
)
def test_bad_values_name_the_field_and_value(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("dlrm", overrides=[override])
    assert message in str(err.value)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config("dlrm", tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config("dlrm", broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_config("dlrm", listy)
    with pytest.raises(ConfigError, match="model: expected one of"):
        load_config("xgboost")


def test_early_stopping_metric_must_be_one_the_model_reports(tmp_path):
    from recfunnel.train.run import _early_stopping_metric, validation_metrics

    assert _early_stopping_metric(load_config("dlrm")) == "auc"
    assert _early_stopping_metric(load_config("two-tower")) == "recall_at_100"
    multi = load_config("dlrm", overrides=["model.heads=[{label: rating, kind: regression}, {label: label}]"])
    assert _early_stopping_metric(multi) == "rating_rmse" and "label_auc" in validation_metrics(multi)
    with pytest.raises(ConfigError, match="train.early_stopping_metric: 'recall_at_100' is not a validation metric"):
        _early_stopping_metric(load_config("dlrm", overrides=["train.early_stopping_metric=recall_at_100"]))
