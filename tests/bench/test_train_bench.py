"""`recfunnel bench train` run tiny: the result's shape and the FLOP count, never its speed."""

import pytest

from recfunnel.bench.train import bench_train, flops_per_sample

# Warnings of torch and TorchRec themselves, raised on first use: importing torch.distributed.optim
# (TorchRec's apply_optimizer_in_backward) about torch.jit, and DMP about `broadcast_buffers`.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch\\.jit\\..*` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`broadcast_buffers` is deprecated:FutureWarning"),
]


def test_flops_formula_matches_a_hand_count():
    # 2 dense features, 2 tables of dim 2, bottom 2-3-2, top (2 + 3 pairs = 5)-4-1; n = 3 vectors
    # MACs: bottom 2*3 + 3*2 = 12, top 5*4 + 4*1 = 24, interaction 3*3*2 = 18 -> 54
    assert flops_per_sample(dense=2, tables=2, dim=2, bottom=[3], top=[4]) == 3 * 2 * 54


def test_flops_of_the_criteo_kaggle_shape():
    # 13-512-256-64-16: 155,136 MACs; 367-512-256-1: 319,232; 27 * 27 * 16 = 11,664
    assert flops_per_sample() == 6 * (155_136 + 319_232 + 11_664)


def test_tiny_run_reports_every_figure():
    result = bench_train(batch_size=64, steps=2, repeats=1, rows_per_table=1000)
    for key in (
        "samples_per_s",
        "plain_pytorch_samples_per_s",
        "roofline_samples_per_s",
        "vs_plain",
        "vs_roofline",
        "matmul_gflops",
        "flops_per_sample",
        "threads",
    ):
        assert result[key] > 0, key
    assert result["flops_per_sample"] == flops_per_sample()
    assert len(result["runs"]["recfunnel"]) == 1


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="steps"):
        bench_train(steps=0)
