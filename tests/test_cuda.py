"""GPU checks: the CUDA paths give the CPU's numbers, and their gradients are the same on every run.

They skip where torch sees no GPU (CI has none); run them on a GPU machine with ``pytest tests/test_cuda.py``. The
rest of the suite runs on the GPU there too, since RecBole trains on the GPU whenever torch sees one.
"""

from __future__ import annotations

import pytest
import torch
from recbole.data import data_preparation
from test_hstu_layers import assert_the_same_on_every_run, repeated_gradients
from test_oneranker import ONERANKER_TINY  # small sizes; HSTU reads the backbone's keys of it

from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset
from recbole_oneranker.model.layers import lookup
from recbole_oneranker.model.layers.relative_bias import RelativeBucketedTimeAndPositionBias
from recbole_oneranker.model.sequential_recommender import HSTU, OneRanker

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: these tests check the GPU path")


def test_lookup_on_cuda_matches_the_cpu_and_its_gradient_is_the_same_on_every_run() -> None:
    # CUDA keeps table[index], whose accumulating backward sorts the indices; index_add_ would add atomically there.
    torch.manual_seed(0)
    table = torch.randn(50, 16)  # [T, D]
    index = torch.randint(0, 50, (64, 1024))  # [P, S]: a few rows take most additions
    upstream = torch.randn(64, 1024, 16)  # [P, S, D]
    on_gpu = table.cuda().requires_grad_()
    torch.testing.assert_close(lookup(on_gpu, index.cuda()).cpu(), table[index], rtol=0, atol=0)

    gradients = repeated_gradients(lambda: (lookup(on_gpu, index.cuda()) * upstream.cuda()).sum(), [on_gpu])
    assert_the_same_on_every_run(gradients)
    on_cpu = table.clone().requires_grad_()
    (lookup(on_cpu, index) * upstream).sum().backward()
    torch.testing.assert_close(gradients[0][0].cpu(), on_cpu.grad, rtol=1e-5, atol=1e-4)


def test_relative_bias_gradients_on_cuda_are_the_same_on_every_run() -> None:
    torch.manual_seed(0)
    bias = RelativeBucketedTimeAndPositionBias(max_seq_len=200, num_buckets=128).cuda()
    timestamps = torch.randint(0, 4, (32, 200)).sort(dim=1).values.cuda()  # [B, N]: gaps of 0-3 collide
    upstream = torch.randn(32, 200, 200, device="cuda")  # [B, N, N]
    gradients = repeated_gradients(lambda: (bias(timestamps, 200) * upstream).sum(), [bias.ts_w, bias.pos_w])
    assert_the_same_on_every_run(gradients)


def _model_on(model_class, device: str, tiny_config: dict):
    """``(model, one full-ranking test batch)`` on ``device``, with weights drawn from seed 0 on the CPU."""
    settings = {**tiny_config, **ONERANKER_TINY, "use_gpu": device == "cuda"}
    config = Config(model_class.__name__, "ml-tiny", config_dict=settings)
    _, _, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = model_class(config, test._dataset).to(device).eval()
    return model, next(iter(test))[0].to(device)


@pytest.mark.parametrize("model_class", [HSTU, OneRanker])
def test_models_score_on_cuda_as_on_the_cpu(model_class, tiny_config) -> None:
    cpu_model, cpu_batch = _model_on(model_class, "cpu", tiny_config)
    gpu_model, gpu_batch = _model_on(model_class, "cuda", tiny_config)
    assert gpu_model.device.type == "cuda" and next(gpu_model.parameters()).is_cuda
    assert cpu_model.device.type == "cpu" and not next(cpu_model.parameters()).is_cuda
    with torch.no_grad():  # both built on the CPU from seed 0, OneRanker's centroids included, then moved
        cpu_scores = cpu_model.full_sort_predict(cpu_batch)
        gpu_scores = gpu_model.full_sort_predict(gpu_batch)
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores, rtol=1e-4, atol=1e-4)


def test_use_gpu_false_keeps_a_run_on_the_cpu_and_the_gpu_visible(tiny_config) -> None:
    config = Config("HSTU", "ml-tiny", config_dict={**tiny_config, **ONERANKER_TINY, "use_gpu": False})
    assert config["device"] == torch.device("cpu")
    assert torch.cuda.is_available()  # compat fix 10 does not hide the GPU from the rest of the process
    assert Config("HSTU", "ml-tiny", config_dict={**tiny_config, **ONERANKER_TINY})["device"].type == "cuda"
