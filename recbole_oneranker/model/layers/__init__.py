"""Pure-PyTorch layers (no RecBole imports): the HSTU block and stack with their relative attention biases, the
query decoders of OneRanker's steps 2 and 3, and the semantic-ID trie with its constrained beam search."""

from __future__ import annotations

from .decoders import PositionwiseCrossAttention, QueryDecoder, QueryDecoderConfig, QueryDecoderLayer
from .hstu import (
    RELATIVE_BIAS_MODES,
    HSTUBlock,
    HSTUConfig,
    HSTUStack,
    build_relative_bias,
    causal_padding_mask,
    load_official_hstu_weights,
)
from .lookup import lookup
from .relative_bias import (
    DEFAULT_BUCKET_DIVISOR,
    RelativeAttentionBias,
    RelativeBucketedTimeAndPositionBias,
    RelativePositionBias,
    bucketize_time_deltas,
)
from .sid_trie import SIDTrie, StepFunction, constrained_beam_search, exact_item_log_probs

__all__ = [
    "DEFAULT_BUCKET_DIVISOR",
    "RELATIVE_BIAS_MODES",
    "HSTUBlock",
    "HSTUConfig",
    "HSTUStack",
    "PositionwiseCrossAttention",
    "QueryDecoder",
    "QueryDecoderConfig",
    "QueryDecoderLayer",
    "RelativeAttentionBias",
    "RelativeBucketedTimeAndPositionBias",
    "RelativePositionBias",
    "SIDTrie",
    "StepFunction",
    "build_relative_bias",
    "bucketize_time_deltas",
    "causal_padding_mask",
    "constrained_beam_search",
    "exact_item_log_probs",
    "load_official_hstu_weights",
    "lookup",
]
