"""Tests of the pure-PyTorch HSTU layers: golden parity with the official code, a slow loop reference, causality,
padding, gradients and config validation. Tiny shapes (B <= 3, N = 8, D = 16); the whole file runs in seconds."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recbole_oneranker.model.layers import (
    HSTUBlock,
    HSTUConfig,
    HSTUStack,
    RelativeBucketedTimeAndPositionBias,
    RelativePositionBias,
    bucketize_time_deltas,
    causal_padding_mask,
    load_official_hstu_weights,
    lookup,
    prefix_causal_mask,
)

B, N, D, HEADS, DV, DQK = 2, 8, 16, 2, 8, 8
MODES = ("time_and_position", "position", "none")


def _golden_dir() -> Path:
    env = os.environ.get("RECBOLE_ONERANKER_REFERENCE")
    if env:
        root = Path(env)
        return root if (root / "hstu_golden.npz").exists() else root / "hstu-golden"
    return Path(__file__).resolve().parents[2] / "shared/reference/hstu-golden"


def _config(mode: str = "time_and_position", **overrides: object) -> HSTUConfig:
    kwargs: dict = dict(
        embedding_dim=D,
        linear_hidden_dim=DV,
        attention_dim=DQK,
        num_heads=HEADS,
        num_blocks=2,
        max_seq_len=N,
        dropout=0.0,
        relative_bias=mode,
    )
    kwargs.update(overrides)
    return HSTUConfig(**kwargs)


def _stack(mode: str = "time_and_position", seed: int = 0, **overrides: object) -> HSTUStack:
    """A stack with random weights that are larger than the N(0, 0.02) init, so every term matters numerically."""
    torch.manual_seed(seed)
    stack = HSTUStack(_config(mode, **overrides))
    with torch.no_grad():
        for name, param in stack.named_parameters():
            if name.endswith("uvqk"):
                param.normal_(0.0, 0.5)
            elif name.endswith(("pos_w", "ts_w")):
                param.normal_(0.0, 1.0)
    return stack.eval()


def _inputs(seed: int = 1, lengths: tuple[int, ...] = (8, 5)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded x (padded rows 0) and timestamps (position ``length`` holds the request time, then 0)."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    x = torch.randn(batch, N, D, generator=gen)
    gaps = torch.randint(1, 200_000, (batch, N), generator=gen, dtype=torch.int64)
    timestamps = 1_500_000_000 + torch.cumsum(gaps, dim=1)
    for b, length in enumerate(lengths):
        x[b, length:] = 0.0
        timestamps[b, length + 1 :] = 0
    return x, lengths_t, timestamps


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are tiny: intra-op threads only add synchronisation (100x slower on a busy 2-core machine)."""
    with _threads(1):
        yield


# ----------------------------------------------------------------------------------------------------------------
# Slow, obviously-correct reference: the golden README formula with explicit loops over batch, head, i and j.
# ----------------------------------------------------------------------------------------------------------------


def _layer_norm(row: np.ndarray, eps: float) -> np.ndarray:
    mean = row.mean()
    var = ((row - mean) ** 2).mean()
    return (row - mean) / math.sqrt(var + eps)


def _silu(z: float | np.ndarray) -> float | np.ndarray:
    return z / (1.0 + np.exp(-z))


def _reference_bias(
    params: dict[str, np.ndarray], ts: np.ndarray | None, b: int, i: int, j: int, n: int, cfg: HSTUConfig
) -> float:
    """rab[b, i, j] = pos_w[j - i + L - 1] + ts_w[bucket(t[i + 1] - t[j])], t[n] taken as t[n - 1]."""
    if "pos_w" not in params:
        return 0.0
    bias = float(params["pos_w"][j - i + cfg.max_seq_len - 1])
    if "ts_w" in params and ts is not None:
        t_next = ts[b, i + 1] if i + 1 < n else ts[b, n - 1]
        delta = max(abs(int(t_next) - int(ts[b, j])), 1)
        bucket = min(max(math.floor(math.log(delta) / 0.301), 0), cfg.num_buckets)
        bias += float(params["ts_w"][bucket])
    return bias


def reference_hstu(
    stack: HSTUStack, x: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor | None
) -> np.ndarray:
    """float64 loop implementation of ``stack`` (eval mode); padded rows are 0, weights divided by max_seq_len."""
    cfg = stack.config
    xs = x.detach().double().numpy().copy()
    ts = None if timestamps is None else timestamps.numpy()
    batch, n, _ = xs.shape
    heads, dv, dqk = cfg.num_heads, cfg.linear_hidden_dim, cfg.attention_dim
    for b in range(batch):
        xs[b, int(lengths[b]) :] = 0.0
    for block in stack.blocks:
        params = {name.split(".")[-1]: p.detach().double().numpy() for name, p in block.named_parameters()}
        params["o_weight"] = block.o.weight.detach().double().numpy()
        params["o_bias"] = block.o.bias.detach().double().numpy()
        out = np.zeros_like(xs)
        for b in range(batch):
            length = int(lengths[b])
            # u, v, q, k for every real row: silu(layer_norm(x) @ uvqk), split [u, v, q, k].
            proj = [_silu(_layer_norm(xs[b, r], cfg.epsilon) @ params["uvqk"]) for r in range(length)]
            hdv, hdqk = heads * dv, heads * dqk
            u = [p[:hdv] for p in proj]
            v = [p[hdv : 2 * hdv] for p in proj]
            q = [p[2 * hdv : 2 * hdv + hdqk] for p in proj]
            k = [p[2 * hdv + hdqk :] for p in proj]
            for i in range(length):
                attn = np.zeros(hdv)
                for h in range(heads):
                    for j in range(i + 1):  # causal; j <= i < length, so padded keys never enter
                        score = float(q[i][h * dqk : (h + 1) * dqk] @ k[j][h * dqk : (h + 1) * dqk])
                        score += _reference_bias(params, ts, b, i, j, n, cfg)
                        a = _silu(score) / cfg.max_seq_len
                        attn[h * dv : (h + 1) * dv] += a * v[j][h * dv : (h + 1) * dv]
                gated = u[i] * _layer_norm(attn, cfg.epsilon)
                out[b, i] = params["o_weight"] @ gated + params["o_bias"] + xs[b, i]
        xs = out
    return xs


# ----------------------------------------------------------------------------------------------------------------
# Golden parity with the official generative-recommenders code.
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, np.ndarray], dict]:
    folder = _golden_dir()
    npz, cfg = folder / "hstu_golden.npz", folder / "hstu_golden_config.json"
    if not (npz.exists() and cfg.exists()):
        pytest.skip(f"HSTU golden vectors not found at {folder} (set RECBOLE_ONERANKER_REFERENCE to their folder)")
    with np.load(npz) as data:
        arrays = {key: data[key] for key in data.files}
    return arrays, json.loads(cfg.read_text())


def _golden_stack(golden_config: dict, mode: str, arrays: dict[str, np.ndarray]) -> HSTUStack:
    keys = ("embedding_dim", "linear_hidden_dim", "attention_dim", "num_heads", "num_blocks", "max_seq_len")
    config = HSTUConfig(
        **{key: golden_config[key] for key in keys},
        num_buckets=golden_config["num_buckets"],
        epsilon=golden_config["epsilon"],
        relative_bias=mode,
    )
    stack = HSTUStack(config)
    load_official_hstu_weights(stack, arrays)
    return stack.eval()


# The GPU takes other kernels (and CUDA's indexing path of the relative bias): parity must hold there too.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_golden_with_timestamps(golden, device) -> None:
    arrays, config = golden
    stack = _golden_stack(config, "time_and_position", arrays).to(device)
    inputs = (torch.from_numpy(arrays[key]).to(device) for key in ("x", "lengths", "timestamps"))
    with torch.no_grad():
        y = stack(*inputs)
    np.testing.assert_allclose(y.cpu().numpy(), arrays["y_with_timestamps"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_golden_without_timestamps_is_relative_bias_none(golden, device) -> None:
    """The official code adds no bias at all without timestamps: that is ``relative_bias="none"``."""
    arrays, config = golden
    stack = _golden_stack(config, "none", arrays).to(device)
    with torch.no_grad():
        y = stack(torch.from_numpy(arrays["x"]).to(device), torch.from_numpy(arrays["lengths"]).to(device))
    np.testing.assert_allclose(y.cpu().numpy(), arrays["y_without_timestamps"], rtol=0, atol=1e-5)


def test_golden_layer0_relative_bias(golden) -> None:
    arrays, config = golden
    stack = _golden_stack(config, "time_and_position", arrays)
    timestamps = torch.from_numpy(arrays["timestamps"])
    with torch.no_grad():
        bias = stack.blocks[0].rel_attn_bias(timestamps, timestamps.shape[1])
    np.testing.assert_allclose(bias.numpy(), arrays["layer0_rel_bias"], rtol=0, atol=1e-6)


def test_golden_matches_loop_reference(golden) -> None:
    """The loop reference itself reproduces the official outputs, so it is a trustworthy oracle below."""
    arrays, config = golden
    stack = _golden_stack(config, "time_and_position", arrays)
    expected = reference_hstu(
        stack,
        torch.from_numpy(arrays["x"]),
        torch.from_numpy(arrays["lengths"]),
        torch.from_numpy(arrays["timestamps"]),
    )
    np.testing.assert_allclose(expected, arrays["y_with_timestamps"], rtol=0, atol=1e-5)


def test_load_official_weights_errors(golden) -> None:
    arrays, config = golden
    stack = HSTUStack(_config("time_and_position"))
    partial = {key: value for key, value in arrays.items() if not key.endswith("_ts_w")}
    with pytest.raises(KeyError, match="ts_w"):
        load_official_hstu_weights(stack, partial)
    bad = dict(arrays)
    bad["param:_attention_layers.0._uvqk"] = np.zeros((16, 63), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        load_official_hstu_weights(stack, bad)
    extra = dict(arrays)
    extra["param:_attention_layers.2._uvqk"] = arrays["param:_attention_layers.0._uvqk"]
    with pytest.raises(KeyError, match="2 blocks"):
        load_official_hstu_weights(stack, extra)
    # A model state dict layout (``_hstu._attention_layers...``) loads too.
    renamed = {key.replace("param:", "_hstu."): value for key, value in arrays.items()}
    load_official_hstu_weights(stack, renamed)
    torch.testing.assert_close(
        stack.blocks[1].uvqk.detach(), torch.from_numpy(arrays["param:_attention_layers.1._uvqk"])
    )


# ----------------------------------------------------------------------------------------------------------------
# Random weights: loop reference, shapes, causality, padding, gradients.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_matches_loop_reference(mode: str) -> None:
    stack = _stack(mode)
    x, lengths, timestamps = _inputs(lengths=(8, 5, 2))
    with torch.no_grad():
        y = stack.double()(x.double(), lengths, timestamps)
    expected = reference_hstu(stack, x, lengths, timestamps)
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=1e-10)
    with torch.no_grad():
        y32 = stack.float()(x, lengths, timestamps)
    np.testing.assert_allclose(y32.numpy(), expected, rtol=0, atol=1e-5)


def test_time_and_position_without_timestamps_is_position_only() -> None:
    both = _stack("time_and_position")
    position = HSTUStack(_config("position")).eval()
    with torch.no_grad():
        for ours, theirs in zip(position.blocks, both.blocks, strict=True):
            ours.uvqk.copy_(theirs.uvqk)
            ours.o.load_state_dict(theirs.o.state_dict())
            ours.rel_attn_bias.pos_w.copy_(theirs.rel_attn_bias.pos_w)
        x, lengths, timestamps = _inputs()
        torch.testing.assert_close(both(x, lengths, None), position(x, lengths, timestamps))


def test_shapes() -> None:
    stack = _stack()
    x, lengths, timestamps = _inputs()
    assert stack(x, lengths, timestamps).shape == (B, N, D)
    # Shorter padded length than max_seq_len works; longer does not.
    assert stack(x[:, :6], lengths.clamp(max=6), timestamps[:, :6]).shape == (B, 6, D)
    with pytest.raises(ValueError, match="max_seq_len"):
        stack(torch.zeros(B, N + 1, D), lengths)
    with pytest.raises(ValueError, match="timestamps"):
        stack(x, lengths, timestamps[:, :5])
    with pytest.raises(ValueError, match="attn_mask"):
        stack(x, lengths, timestamps, torch.ones(B, N, N - 1, dtype=torch.bool))
    assert stack.blocks[0](x).shape == (B, N, D)
    assert RelativeBucketedTimeAndPositionBias(N)(timestamps, N).shape == (B, N, N)
    assert RelativeBucketedTimeAndPositionBias(N)(None, N).shape == (1, N, N)
    assert RelativePositionBias(N)(timestamps, 5).shape == (1, 5, 5)


def test_padded_rows_are_zero() -> None:
    stack = _stack()
    x, lengths, timestamps = _inputs(lengths=(8, 5, 2))
    y = stack(x, lengths, timestamps)
    for b, length in enumerate(lengths.tolist()):
        assert torch.all(y[b, length:] == 0)
        assert torch.all(y[b, :length].abs().sum(-1) > 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("t", [0, 3, 6])
def test_causality_in_x(mode: str, t: int) -> None:
    """Perturbing input position t leaves outputs at positions < t unchanged (and does change position t)."""
    stack = _stack(mode)
    x, lengths, timestamps = _inputs(lengths=(8, 8))
    perturbed = x.clone()
    perturbed[:, t] += torch.randn(D)
    with torch.no_grad():
        y, y2 = stack(x, lengths, timestamps), stack(perturbed, lengths, timestamps)
    torch.testing.assert_close(y[:, :t], y2[:, :t], rtol=0, atol=0)
    assert not torch.allclose(y[:, t], y2[:, t])


@pytest.mark.parametrize("t", [0, 3, 5])
def test_causality_in_timestamps(t: int) -> None:
    """Output i depends on timestamps[0 .. i + 1]: query i's time bucket uses t[i + 1] (the next event; the request
    time for the last item). So perturbing timestamps at positions >= t + 2 leaves outputs <= t unchanged, while
    perturbing timestamps[t + 1] leaves outputs < t unchanged but does change output t."""
    stack = _stack("time_and_position")
    x, lengths, timestamps = _inputs(lengths=(8, 8))
    with torch.no_grad():
        y = stack(x, lengths, timestamps)
        later = timestamps.clone()
        later[:, t + 2 :] += 10**6 * torch.arange(1, N - t - 1)  # far away: different buckets
        torch.testing.assert_close(stack(x, lengths, later)[:, : t + 1], y[:, : t + 1], rtol=0, atol=0)
        following = timestamps.clone()
        following[:, t + 1] += 10**7
        y_following = stack(x, lengths, following)
    torch.testing.assert_close(y_following[:, :t], y[:, :t], rtol=0, atol=0)
    assert not torch.allclose(y_following[:, t], y[:, t])


@pytest.mark.parametrize("mode", MODES)
def test_padding_garbage_is_ignored(mode: str) -> None:
    """At equal padded N, garbage in padded x rows (even inf/nan) and in timestamps after position ``length`` leaves
    every output unchanged. ``timestamps[b, length]`` is not garbage: it is the request time the last real query
    uses (see ``test_request_time_slot_is_used``)."""
    stack = _stack(mode)
    x, lengths, timestamps = _inputs(lengths=(5, 2, 8))
    dirty_x, dirty_ts = x.clone(), timestamps.clone()
    gen = torch.Generator().manual_seed(7)
    for b, length in enumerate(lengths.tolist()):
        dirty_x[b, length:] = 100 * torch.randn(N - length, D, generator=gen)
        dirty_ts[b, length + 1 :] = torch.randint(0, 10**12, (max(N - length - 1, 0),), generator=gen)
    dirty_x[0, N - 1, 0] = float("nan")
    dirty_x[1, N - 1, 3] = float("inf")
    with torch.no_grad():
        clean, dirty = stack(x, lengths, timestamps), stack(dirty_x, lengths, dirty_ts)
    torch.testing.assert_close(dirty, clean, rtol=0, atol=0)


def test_request_time_slot_is_used() -> None:
    """The time of the next event, stored right after the last item, changes the last real output only."""
    stack = _stack("time_and_position")
    x, lengths, timestamps = _inputs(lengths=(5, 5))
    moved = timestamps.clone()
    moved[:, 5] += 10**7
    with torch.no_grad():
        y, y2 = stack(x, lengths, timestamps), stack(x, lengths, moved)
    torch.testing.assert_close(y2[:, :4], y[:, :4], rtol=0, atol=0)
    assert not torch.allclose(y2[:, 4], y[:, 4])


def test_trimmed_padding_gives_identical_outputs() -> None:
    """Attention weights are divided by ``max_seq_len`` (the official code's always-padded N), not by the tensor's
    length: the same sequences padded to 8 or only to their longest + 1 (7: the slot holding the request time)
    give the same outputs, so batches can be padded to their own longest sequence at no cost in fidelity."""
    stack = _stack("time_and_position").double()
    x, lengths, timestamps = _inputs(lengths=(6, 4))
    with torch.no_grad():
        y8 = stack(x.double(), lengths, timestamps)
        y7 = stack(x[:, :7].double(), lengths, timestamps[:, :7])
    np.testing.assert_allclose(y8.numpy(), reference_hstu(stack, x, lengths, timestamps), rtol=0, atol=1e-10)
    torch.testing.assert_close(y7, y8[:, :7], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_every_parameter(mode: str) -> None:
    torch.manual_seed(3)
    stack = HSTUStack(_config(mode, dropout=0.2)).train()
    x, lengths, timestamps = _inputs(lengths=(8, 5))
    y = stack(x, lengths, timestamps)
    real = (torch.arange(N).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)  # [B, N, 1]: position < length
    (y * real).sum().backward()
    names = [name for name, _ in stack.named_parameters()]
    assert len(names) == 2 * {"time_and_position": 5, "position": 4, "none": 3}[mode]
    for name, param in stack.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
        if name.endswith("pos_w"):
            # Entries j - i + L - 1 >= L (keys after the query) are always masked: dead, as in the official code.
            assert torch.all(param.grad[N:] == 0), name


def repeated_gradients(loss: Callable[[], torch.Tensor], parameters: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The gradients of ``parameters`` after each of 20 backward passes of ``loss()``."""
    gradients = []
    for _ in range(20):
        for parameter in parameters:
            parameter.grad = None
        loss().backward()
        gradients.append([parameter.grad.clone() for parameter in parameters])
    return gradients


def assert_the_same_on_every_run(gradients: list[list[torch.Tensor]]) -> None:
    for run in gradients[1:]:
        assert all(torch.equal(grad, first) for grad, first in zip(run, gradients[0], strict=True))


def test_bias_gradients_are_the_same_on_every_run_with_several_threads() -> None:
    # From B N^2 >= 2^15 indices, a plain table[index] backward adds into the table atomically from several CPU
    # threads: the gradient changed from run to run, and whole OneRanker runs on ml-100k with it. Time gaps of 0-3
    # fall in buckets 0-3, so the threads' additions collide on a few entries and any change of their order shows.
    torch.manual_seed(0)
    bias = RelativeBucketedTimeAndPositionBias(max_seq_len=200, num_buckets=128)
    timestamps = torch.randint(0, 4, (32, 200)).sort(dim=1).values  # [B, N]
    upstream = torch.randn(32, 200, 200)  # [B, N, N]
    with _threads(2):
        gradients = repeated_gradients(lambda: (bias(timestamps, 200) * upstream).sum(), [bias.ts_w, bias.pos_w])
    assert_the_same_on_every_run(gradients)


def test_lookup_of_table_rows_gives_the_same_gradient_on_every_run_with_several_threads() -> None:
    # The sampled negatives of HSTU's training, [positions, negatives] rows of the item table: a popular few rows
    # take most additions, so a change in the threads' order of adding shows.
    torch.manual_seed(0)
    table = torch.randn(50, 16, requires_grad=True)  # [T, D]
    index = torch.randint(0, 50, (64, 1024))  # [P, S]
    upstream = torch.randn(64, 1024, 16)  # [P, S, D]
    torch.testing.assert_close(lookup(table, index), table[index], rtol=0, atol=0)
    with _threads(2):
        gradients = repeated_gradients(lambda: (lookup(table, index) * upstream).sum(), [table])
    assert_the_same_on_every_run(gradients)


def test_block_default_mask_is_causal() -> None:
    block = _stack("position").blocks[0]
    x = torch.randn(B, N, D)
    mask = causal_padding_mask(torch.full((B,), N), N)
    torch.testing.assert_close(block(x), block(x, mask))


def test_bucketize_time_deltas() -> None:
    deltas = torch.tensor([0, 1, -1, 2, 3, 1000, -(10**9), 10**30 // 10**12])
    expected = [min(max(math.floor(math.log(max(abs(int(d)), 1)) / 0.301), 0), 128) for d in deltas]
    assert bucketize_time_deltas(deltas, num_buckets=128).tolist() == expected
    assert bucketize_time_deltas(torch.tensor([10**18]), num_buckets=16).tolist() == [16]


# ----------------------------------------------------------------------------------------------------------------
# Config validation.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("embedding_dim", 0),
        ("linear_hidden_dim", -1),
        ("attention_dim", 2.5),
        ("num_heads", 0),
        ("num_blocks", 0),
        ("max_seq_len", True),
        ("num_buckets", 0),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("attn_dropout", 1.5),
        ("relative_bias", "rotary"),
        ("epsilon", 0.0),
    ],
)
def test_config_validation(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        _config(**{field: value})


def test_config_defaults() -> None:
    config = HSTUConfig(
        embedding_dim=D, linear_hidden_dim=DV, attention_dim=DQK, num_heads=HEADS, num_blocks=1, max_seq_len=N
    )
    assert (config.dropout, config.attn_dropout, config.num_buckets) == (0.2, 0.0, 128)
    assert (config.relative_bias, config.epsilon) == ("time_and_position", 1e-6)
    block = HSTUBlock(config)
    assert block.uvqk.shape == (D, 2 * HEADS * DV + 2 * HEADS * DQK)
    assert block.o.weight.shape == (D, HEADS * DV)
    assert isinstance(block.rel_attn_bias, RelativeBucketedTimeAndPositionBias)
    assert block.rel_attn_bias.ts_w.shape == (129,) and block.rel_attn_bias.pos_w.shape == (2 * N - 1,)


def test_the_default_mask_is_the_causal_padding_mask() -> None:
    stack = _stack()
    x, lengths, timestamps = _inputs()
    with torch.no_grad():
        explicit = stack(x, lengths, timestamps, causal_padding_mask(lengths, N))
        torch.testing.assert_close(stack(x, lengths, timestamps), explicit, rtol=0, atol=0)


@pytest.mark.parametrize("num_prefix", [1, 3])
def test_a_bidirectional_prefix_reads_later_prefix_tokens_and_nothing_after(num_prefix: int) -> None:
    stack = _stack("position")
    x, lengths, timestamps = _inputs()
    lengths = lengths.clamp(min=num_prefix + 2)
    mask = prefix_causal_mask(lengths, N, num_prefix)
    perturbed_prefix, perturbed_history = x.clone(), x.clone()
    perturbed_prefix[:, num_prefix - 1] += torch.randn(D)  # the last prefix token (a random direction: see above)
    perturbed_history[:, num_prefix] += torch.randn(D)  # the first history token
    with torch.no_grad():
        y = stack(x, lengths, timestamps, mask)
        by_prefix = stack(perturbed_prefix, lengths, timestamps, mask)
        by_history = stack(perturbed_history, lengths, timestamps, mask)
    assert not torch.allclose(by_prefix[:, 0], y[:, 0])  # the first prefix token sees the last one
    torch.testing.assert_close(by_history[:, :num_prefix], y[:, :num_prefix], rtol=0, atol=0)  # but no history


@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    num_prefix=st.integers(0, 6),
)
def test_prefix_causal_mask_properties(lengths: list[int], num_prefix: int) -> None:
    lengths_tensor = torch.tensor(lengths)
    mask = prefix_causal_mask(lengths_tensor, 6, num_prefix)
    causal = causal_padding_mask(lengths_tensor, 6)
    assert (mask >= causal).all()  # everything causal stays visible
    extra = mask & ~causal  # what the prefix adds: only prefix -> later prefix keys that are real
    rows, queries, keys = extra.nonzero(as_tuple=True)
    assert (queries < num_prefix).all() and (keys < num_prefix).all() and (keys > queries).all()
    assert (keys < lengths_tensor[rows]).all()
    assert not (mask & ~(torch.arange(6) < lengths_tensor[:, None])[:, None, :]).any()  # never a padded key
