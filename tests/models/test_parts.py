"""Model parts against hand-computed values; rankers and towers wired from them."""

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.config import HeadConfig, load_config
from recfunnel.data.format.manifest import DenseFeature, Label, Manifest, SparseFeature, SplitInfo
from recfunnel.errors import ConfigError
from recfunnel.models.parts import CrossInteraction, DotInteraction, FMInteraction, SparseArch, embedding_tables
from recfunnel.models.ranker import build_ranker
from recfunnel.models.two_tower import build_two_tower


def manifest(kind: str = "ctr") -> Manifest:
    sparse = [
        SparseFeature("user_id", 5),
        SparseFeature("item_id", 7),
        SparseFeature("city", 3),
        SparseFeature("genres", 4, multi_hot=True, max_len=3),
    ]
    roles = {"user": "user_id", "item": "item_id", "user_features": ["city", "age"], "item_features": ["genres"]}
    return Manifest(
        kind=kind,
        dense=[DenseFeature("age"), DenseFeature("price")],
        sparse=sparse,
        labels=[Label("click"), Label("rating", "regression")],
        splits={"train": SplitInfo(rows=0, blocks=[])},
        split={},
        block_rows=4,
        roles=roles,
    )


def batch(n: int = 3) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    lengths = torch.tensor([1] * n + [1] * n + [1] * n + [2, 0, 1][:n])
    values = torch.cat(
        [
            torch.tensor([1, 2, 4][:n]),
            torch.tensor([3, 6, 1][:n]),
            torch.tensor([0, 1, 2][:n]),
            torch.tensor([1, 3, 2])[: int(lengths[3 * n :].sum())],
        ]
    )
    kjt = KeyedJaggedTensor(keys=["user_id", "item_id", "city", "genres"], values=values, lengths=lengths, stride=n)
    return torch.randn(n, 2), kjt


def test_dot_interaction_is_the_dense_vector_and_the_upper_triangle_of_dots():
    dense = torch.tensor([[1.0, 0.0]])
    sparse = torch.tensor([[[0.0, 2.0], [3.0, 1.0]]])  # F = 2
    out = DotInteraction(2, 2)(dense, sparse)
    # vectors: d=(1,0), a=(0,2), b=(3,1): d.a = 0, d.b = 3, a.b = 2
    assert out.tolist() == [[1.0, 0.0, 0.0, 3.0, 2.0]]


def test_fm_term_is_the_sum_of_pairwise_dot_products():
    dense = torch.tensor([[1.0, 0.0]])
    sparse = torch.tensor([[[0.0, 2.0], [3.0, 1.0]]])
    out = FMInteraction(2, 2)(dense, sparse)
    assert out.shape == (1, 7)
    assert out[0, -1].item() == pytest.approx(0.0 + 3.0 + 2.0)
    assert out[0, :6].tolist() == [1.0, 0.0, 0.0, 2.0, 3.0, 1.0]


def test_cross_interaction_keeps_the_width_of_all_embeddings():
    layer = CrossInteraction(3, 4, layers=2)
    assert layer(torch.randn(5, 4), torch.randn(5, 3, 4)).shape == (5, 16)
    low_rank = CrossInteraction(3, 4, layers=2, low_rank=2)
    assert low_rank(torch.randn(5, 4), torch.randn(5, 3, 4)).shape == (5, 16)


def test_sparse_arch_mean_pools_multi_hot_and_sums_single_hot():
    m = manifest()
    arch = SparseArch(embedding_tables([m.feature("city"), m.feature("genres")], 2, "mean"))
    tables = arch.embedding_bag_collection.embedding_bags
    kjt = KeyedJaggedTensor(
        keys=["city", "genres"], values=torch.tensor([2, 1, 3]), lengths=torch.tensor([1, 2]), stride=1
    )
    out = arch(kjt)
    assert out.shape == (1, 2, 2)
    torch.testing.assert_close(out[0, 0], tables["city"].weight[2])
    torch.testing.assert_close(out[0, 1], (tables["genres"].weight[1] + tables["genres"].weight[3]) / 2)


@pytest.mark.parametrize("kind", ["dlrm", "dcnv2", "deepfm"])
def test_rankers_give_one_logit_column_per_head_output(kind):
    cfg = load_config(kind, overrides=["model.embedding_dim=4"]).model
    cfg.heads = [HeadConfig("click"), HeadConfig("rating", "regression"), HeadConfig("click", "multiclass", classes=3)]
    model = build_ranker(kind, manifest(), cfg)
    dense, kjt = batch()
    logits = model(dense, kjt)
    assert logits.shape == (3, 5)
    logits.sum().backward()  # every part is trainable end to end
    assert all(p.grad is not None for p in model.parameters())


def test_ranker_reads_only_the_chosen_features_in_any_key_order():
    cfg = load_config("dlrm", overrides=["model.features=[item_id, user_id]", "model.dense_features=[price]"]).model
    model = build_ranker("dlrm", manifest(), cfg).eval()
    dense, kjt = batch()
    reordered = kjt.permute([3, 2, 1, 0])
    changed = dense.clone()
    changed[:, 0] += 100  # "age" is not a feature of this model
    torch.testing.assert_close(model(dense, kjt), model(changed, reordered))


def test_unknown_feature_is_a_config_error_naming_it():
    cfg = load_config("dlrm", overrides=["model.features=[item_idd]"]).model
    with pytest.raises(ConfigError, match="model.features: no feature 'item_idd'.*did you mean 'item_id'"):
        build_ranker("dlrm", manifest(), cfg)


def test_two_tower_towers_use_their_role_features():
    cfg = load_config("two-tower", overrides=["model.embedding_dim=4", "model.tower_mlp=[8, 3]"]).model
    model = build_two_tower(manifest("interactions"), cfg).eval()  # dropout off
    assert model.user_tower.sparse_keys == ["user_id", "city"] and model.user_tower.dense_names == ["age"]
    assert model.item_tower.sparse_keys == ["item_id", "genres"] and model.item_tower.dense_names == []
    dense, kjt = batch()
    users, items = model(dense, kjt)
    assert users.shape == items.shape == (3, 3)
    changed = dense.clone()
    changed[:, 1] += 5  # price: no tower reads it
    torch.testing.assert_close(model(changed, kjt)[0], users)


def test_cosine_towers_return_unit_vectors():
    cfg = load_config("two-tower", overrides=["model.score=cosine", "model.embedding_dim=4"]).model
    users, items = build_two_tower(manifest("interactions"), cfg)(*batch())
    torch.testing.assert_close(users.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(items.norm(dim=1), torch.ones(3))


def test_two_tower_refuses_a_ctr_dataset():
    with pytest.raises(ConfigError, match="interactions"):
        build_two_tower(manifest("ctr"), load_config("two-tower").model)
