"""Pure-PyTorch layers (no RecBole imports): the HSTU block and stack with their relative attention biases and
masks, the item-sequence encoder and its unknown-item vector, the next-item softmax and repeat shift, OneRanker's
step-2 and step-3 decoders, for semantic IDs the trie with its constrained beam search and GPR's level-wise generator
and value estimator, and OneRec's encoder-decoder with its mixture-of-experts feed-forward block, the items' side
features, and the losses of post-training: DPO's, and the policy-gradient pieces (GAE, PPO's and ECPO's surrogates,
HEPO's rewards)."""

from __future__ import annotations

from .candidate_history import CandidateHistoryConfig, CandidateHistoryFeatures, candidate_history_buckets
from .decoders import PositionwiseCrossAttention, QueryDecoder, QueryDecoderConfig, QueryDecoderLayer, visible_states
from .encoder_decoder import DecoderCache, EncoderDecoderConfig, HistoryEncoder, SessionDecoder, SessionDecoderLayer
from .hstu import (
    ATTENTION_KINDS,
    RELATIVE_BIAS_MODES,
    HSTUBlock,
    HSTUConfig,
    HSTUStack,
    TokenTypeFFN,
    build_relative_bias,
    causal_padding_mask,
    load_official_hstu_weights,
    prefix_causal_mask,
)
from .item_features import ItemFeatureConfig, ItemFeatureEmbedding
from .lookup import lookup
from .moe import FeedForward, MixtureOfExperts, MoEConfig, feed_forward
from .policy_gradient import (
    clipped_entries,
    clipped_surrogate,
    code_popularity,
    early_clipped_entries,
    early_clipped_surrogate,
    generalized_advantages,
    group_advantages,
    hepo_advantages,
    process_rewards,
    sample_without_replacement,
)
from .preference import dpo_loss, implicit_reward_margins, preference_pairs
from .ranking_decoder import RankingDecoder, RankingDecoderConfig, candidate_mask
from .relative_bias import (
    DEFAULT_BUCKET_DIVISOR,
    RelativeAttentionBias,
    RelativeBucketedTimeAndPositionBias,
    RelativePositionBias,
    bucketize_time_deltas,
)
from .repeat_explore import RepeatExplore, RepeatExploreConfig, RepeatExploreLogProbs
from .sequence_encoder import TOKEN_TYPES, SequenceEncoder, SequenceEncoderConfig
from .sid_generation import (
    SIDGenerator,
    SIDGeneratorConfig,
    SIDLevelStructure,
    ValueEstimator,
    segment_logsumexp,
    sid_level_structure,
)
from .sid_trie import SIDTrie, StepFunction, constrained_beam_search, exact_item_log_probs
from .softmax import LOSS_TYPES, NextItemSoftmax, RepeatShift, SoftmaxConfig, distinct_items, seen_before
from .task_tokens import TaskTokenConfig, TaskTokenDecoder, heterogeneous_mask
from .unknown_items import UnknownItems, UnknownItemsConfig

__all__ = [
    "ATTENTION_KINDS",
    "DEFAULT_BUCKET_DIVISOR",
    "CandidateHistoryConfig",
    "CandidateHistoryFeatures",
    "DecoderCache",
    "EncoderDecoderConfig",
    "FeedForward",
    "HSTUBlock",
    "HSTUConfig",
    "HSTUStack",
    "HistoryEncoder",
    "ItemFeatureConfig",
    "ItemFeatureEmbedding",
    "LOSS_TYPES",
    "MixtureOfExperts",
    "MoEConfig",
    "NextItemSoftmax",
    "PositionwiseCrossAttention",
    "QueryDecoder",
    "QueryDecoderConfig",
    "QueryDecoderLayer",
    "RELATIVE_BIAS_MODES",
    "RankingDecoder",
    "RankingDecoderConfig",
    "RelativeAttentionBias",
    "RelativeBucketedTimeAndPositionBias",
    "RelativePositionBias",
    "RepeatExplore",
    "RepeatExploreConfig",
    "RepeatExploreLogProbs",
    "RepeatShift",
    "SIDGenerator",
    "SIDGeneratorConfig",
    "SIDLevelStructure",
    "SIDTrie",
    "TOKEN_TYPES",
    "SequenceEncoder",
    "SequenceEncoderConfig",
    "SessionDecoder",
    "SessionDecoderLayer",
    "SoftmaxConfig",
    "StepFunction",
    "TaskTokenConfig",
    "TaskTokenDecoder",
    "TokenTypeFFN",
    "UnknownItems",
    "UnknownItemsConfig",
    "ValueEstimator",
    "bucketize_time_deltas",
    "build_relative_bias",
    "candidate_history_buckets",
    "candidate_mask",
    "causal_padding_mask",
    "clipped_entries",
    "clipped_surrogate",
    "code_popularity",
    "constrained_beam_search",
    "distinct_items",
    "dpo_loss",
    "early_clipped_entries",
    "early_clipped_surrogate",
    "exact_item_log_probs",
    "feed_forward",
    "generalized_advantages",
    "group_advantages",
    "hepo_advantages",
    "heterogeneous_mask",
    "implicit_reward_margins",
    "load_official_hstu_weights",
    "lookup",
    "preference_pairs",
    "prefix_causal_mask",
    "process_rewards",
    "sample_without_replacement",
    "seen_before",
    "segment_logsumexp",
    "sid_level_structure",
    "visible_states",
]
