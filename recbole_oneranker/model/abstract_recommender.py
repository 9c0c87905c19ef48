"""``GenerativeRecommender``: the plumbing every generative model of this package shares.

A generative model here trains on one row per user (``whole_sequence``) with a loss at every position, and ranks at
each row's last position. What that needs, whatever the backbone: the target after every position (next items,
next labels), the request time after the history, rows grouped by length so short histories are not padded to the
batch's longest, each distinct request encoded once at evaluation, the items a user has already seen (history
negatives and the learned repeat shift), and the next-item softmax. A model subclasses this base, composes its own
layers (``model/layers``), and implements :meth:`encode`, :meth:`item_vectors` and :meth:`serve`; no model subclasses
another model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import FeatureSource, FeatureType, InputType
from torch import Tensor

from recbole_oneranker.data import items_held
from recbole_oneranker.data.sid import load_dataset_sids
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import (
    TOKEN_TYPES,
    HSTUConfig,
    ItemFeatureConfig,
    ItemFeatureEmbedding,
    NextItemSoftmax,
    RepeatShift,
    SequenceEncoder,
    SequenceEncoderConfig,
    SIDLevelStructure,
    SIDTrie,
    SoftmaxConfig,
    seen_before,
    sid_level_structure,
)
from recbole_oneranker.model.serving import ServingResult

__all__ = [
    "GenerativeRecommender",
    "check_user_token_fields",
    "hsd_options",
    "hstu_config",
    "item_feature_embedding",
    "top_distinct",
]


def check_user_token_fields(config, dataset) -> list[str]:
    """``user_token_fields``: token columns of the ``.user`` file, each read as one token before the history."""
    fields = list(config["user_token_fields"] or [])
    for field in fields:
        if dataset.field2source.get(field) != FeatureSource.USER or dataset.field2type[field] != FeatureType.TOKEN:
            raise ConfigError(
                f"user_token_fields: '{field}' is not a token column of {config['dataset']}.user as loaded "
                f"(load it with load_col: {{user: [user_id, {field}, ...]}})"
            )
    return fields


def item_feature_embedding(config, dataset) -> ItemFeatureEmbedding | None:
    """An embedding of the items' side features named by ``item_feature_fields``, or None when it names none.

    A field is a token or token-sequence column of the ``.item`` file (ml-100k's ``class`` genres, Beauty's
    ``attributes``), or a token column of the ``.inter`` file that describes the item (Taobao's ``category_id``):
    an item takes the value of its first interaction in ``dataset`` (the training split), and an item that split
    never shows gets none.
    """
    fields = list(config["item_feature_fields"] or [])
    tables, num_values = {}, {}
    for field in fields:
        source, kind = dataset.field2source.get(field), dataset.field2type.get(field)
        if source == FeatureSource.ITEM and kind in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
            tables[field] = dataset.item_feat[field]
        elif source == FeatureSource.INTERACTION and kind == FeatureType.TOKEN:
            tables[field] = first_value_per_item(
                dataset.inter_feat[dataset.iid_field].numpy(), dataset.inter_feat[field].numpy(), dataset.item_num
            )
        else:
            raise ConfigError(
                f"item_feature_fields: '{field}' is not a token or token_seq column of {config['dataset']}.item, nor "
                f"a token column of its .inter file, as loaded (load it with load_col: "
                f"{{item: [item_id, {field}, ...]}})"
            )
        num_values[field] = dataset.num(field)
    if not fields:
        return None
    return ItemFeatureEmbedding(ItemFeatureConfig(config["hidden_size"], num_values), tables)


def first_value_per_item(items: np.ndarray, values: np.ndarray, num_items: int) -> Tensor:
    """``[num_items]`` the value of each item's first row (0 for an item without rows).

    >>> first_value_per_item(np.array([2, 1, 2]), np.array([5, 6, 7]), 4).tolist()
    [0, 6, 5, 0]
    """
    table = np.zeros(num_items, dtype=np.int64)
    distinct, first = np.unique(items, return_index=True)
    table[distinct] = values[first]
    return torch.from_numpy(table)


def hstu_config(config, num_prefix_tokens: int, max_history: int, **options) -> HSTUConfig:
    """The HSTU stack of a model's config (keys of ``properties/model/HSTU.yaml``), sized for ``num_prefix_tokens``
    tokens before a history of ``max_history`` items and the slot that carries the request time; ``options`` set
    the stack's other fields (e.g. ``attention``)."""
    return HSTUConfig(
        embedding_dim=config["hidden_size"],
        linear_hidden_dim=config["linear_hidden_dim"],
        attention_dim=config["attention_dim"],
        num_heads=config["n_heads"],
        num_blocks=config["n_layers"],
        max_seq_len=num_prefix_tokens + max_history + 1,
        dropout=config["dropout_prob"],
        attn_dropout=config["attn_dropout_prob"],
        num_buckets=config["num_time_buckets"],
        relative_bias=config["relative_bias"],
        **options,
    )


def hsd_options(config) -> dict:
    """GPR's HSD switches of a config (``attention``, ``token_type_ffn``, ``bidirectional_prefix``) as the options of
    :meth:`GenerativeRecommender.item_sequence_encoder`: the trunk GPR builds, and OneRanker's step 1 with them."""
    return {
        "bidirectional_prefix": config["bidirectional_prefix"],
        "attention": config["attention"],
        "num_token_types": TOKEN_TYPES if config["token_type_ffn"] else 0,  # the prefix (user tokens) and the items
    }


def top_distinct(items: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best-scored distinct items of each row of ``items`` (``[B, C]``, 0 = none) with their ``scores``
    (``[B, C]``; an item found twice, e.g. by two beams, has the same score both times), best first, 0-padded.

    >>> top_distinct(torch.tensor([[3, 5, 3, 0]]), torch.tensor([[0.5, 0.9, 0.5, -1.0]]), 2)
    (tensor([[5, 3]]), tensor([[0.9000, 0.5000]]))
    """
    scores = scores.masked_fill(items == 0, float("-inf"))
    order = scores.argsort(dim=1, descending=True)
    items, scores = items.gather(1, order), scores.gather(1, order)
    keep = torch.cat([torch.ones_like(items[:, :1], dtype=torch.bool), items[:, 1:] != items[:, :-1]], 1)
    rank = keep.long().cumsum(1) - 1
    out_items = items.new_zeros(len(items), k)
    out_scores = scores.new_full((len(items), k), float("-inf"))
    selected = keep & (rank < k) & (items > 0)
    rows = torch.arange(len(items), device=items.device).unsqueeze(1).expand_as(items)
    out_items[rows[selected], rank[selected]] = items[selected]
    out_scores[rows[selected], rank[selected]] = scores[selected]
    return out_items, out_scores


class GenerativeRecommender(SequentialRecommender):
    """Base of the generative models: targets at every position, length buckets, distinct requests, seen items and
    the next-item softmax (config keys of ``properties/model/HSTU.yaml``).

    Subclasses implement:
        - :meth:`encode`: ``[B, N, D]`` states of a batch's history positions;
        - :meth:`item_vectors`: the normalised item vectors the softmax scores;
        - :meth:`serve`: a :class:`~recbole_oneranker.model.serving.ServingResult` for a batch of requests.
    """

    input_type = InputType.POINTWISE
    # (old prefix, new prefix) of parameter names a model renamed; a checkpoint holding ``LEGACY_MARKER`` is read
    # through them, so checkpoints saved before a reshaping keep loading.
    LEGACY_KEYS: tuple[tuple[str, str], ...] = ()
    LEGACY_MARKER = "item_embedding.weight"
    # (old name, new name) of single parameters renamed later, read through whenever a checkpoint holds the old name.
    RENAMED_KEYS: tuple[tuple[str, str], ...] = ()
    # Whether the model trains the next-item softmax (``loss_type``), whose logits ``repeat_bias`` shifts; a model
    # that generates semantic IDs shifts its items' log-probabilities instead and sets it False.
    TRAINS_ITEM_SOFTMAX = True
    # Whether history items enter by their id embeddings (:meth:`item_sequence_encoder`), which
    # ``history_id_dropout`` replaces for unknown items; a model that embeds them by their semantic IDs, codes that
    # trained items share, sets it False.
    EMBEDS_ITEM_IDS = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.register_load_state_dict_pre_hook(self._rename_legacy_keys)
        self.hidden_size = config["hidden_size"]
        self.cascade_fields = list(config["cascade_fields"] or [])  # task labels from interest to value; [] = none
        self.value_field = config["value_field"]
        self.dropout_prob = config["dropout_prob"]
        self.temperature = config["temperature"]
        self.length_bucket_size = config["length_bucket_size"]
        self.length_buckets_on_gpu = config["length_buckets_on_gpu"]
        self.use_time = config["relative_bias"] == "time_and_position"
        # What sampled evaluation changes between the copies of a request: the scored item and its 0/1 label.
        self._candidate_fields = frozenset({self.ITEM_ID, config["LABEL_FIELD"]})
        self.LIST_SUFFIX = config["LIST_SUFFIX"]
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"]
        self.TIME = config["TIME_FIELD"]
        try:
            softmax_config = SoftmaxConfig(
                num_items=self.n_items,
                embedding_dim=self.hidden_size,
                loss_type=config["loss_type"],
                num_negatives=config["num_negatives"],
                history_negatives=config["history_negatives"],
                temperature=self.temperature,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from error
        sampled = softmax_config.loss_type == "sampled_softmax" and self.trains_item_softmax(config)
        if config["repeat_bias"] and sampled and not config["history_negatives"]:
            raise ConfigError(
                "repeat_bias learns from the seen items among the softmax's candidates: with sampled_softmax set "
                "history_negatives: True (or use full_softmax)"
            )
        if config["repeat_explore"] and config["repeat_bias"]:  # a key of the models with a copy mixture
            raise ConfigError("repeat_explore and repeat_bias both model repeated items: set one of them")
        self.repeat_shift = RepeatShift() if config["repeat_bias"] else None
        if not config["history_unknown_items"] and not config["history_id_dropout"]:
            raise ConfigError(
                "history_unknown_items: False keeps unknown items' rows instead of history_id_dropout's vector: "
                "without history_id_dropout there is no vector, so leave it True"
            )
        if config["history_id_dropout"] and not self.embeds_item_ids(config):
            raise ConfigError(
                f"history_id_dropout replaces id embeddings of unknown history items: {type(self).__name__} embeds "
                "its history by semantic IDs here, whose codes trained items share; set it to 0"
            )
        self.softmax = NextItemSoftmax(softmax_config, self.item_vectors, self.repeat_shift)
        # Side features of the history items, added to their input tokens (a model reads them in :meth:`encode`).
        features = item_feature_embedding(config, dataset) if config["history_item_features"] else None
        self.history_item_features = features

    def item_sequence_encoder(
        self,
        config,
        dataset,
        num_prefix_tokens: int = 0,
        item_table: bool = True,
        bidirectional_prefix: bool = False,
        **stack_options,
    ) -> SequenceEncoder:
        """The HSTU encoder over the history's item ids (``num_prefix_tokens`` tokens before them, attending to each
        other both ways with ``bidirectional_prefix``; ``stack_options``: the stack's other :class:`HSTUConfig`
        fields, e.g. ``attention``; ``item_table: False``: no id table, the model embeds its tokens itself), with
        ``history_id_dropout``'s unknown-item vector for the items no row of ``dataset`` (the training split the model
        is built with) holds. The vector replaces the item's id row only: what a model adds to the token (feedback
        level, side features, with OneRanker's ``generation: sid`` the code embeddings) still enters. Which items
        are known is not saved with the model: every load path here builds the model from its training split, which
        gives the same set."""
        dropout, known = config["history_id_dropout"], None
        if dropout:  # without history_unknown_items, every item keeps its row: the vector is the dropout's alone
            known = items_held(dataset) if config["history_unknown_items"] else torch.ones(self.n_items, dtype=bool)
        return SequenceEncoder(
            SequenceEncoderConfig(
                num_items=self.n_items if item_table else 0,
                hstu=hstu_config(config, num_prefix_tokens, self.max_seq_length, **stack_options),
                use_position_embedding=config["use_position_embedding"],
                bidirectional_prefix=bidirectional_prefix,
                unknown_item_dropout=dropout,
            ),
            known_items=known,
        )

    def embeds_item_ids(self, config) -> bool:
        """Whether the history tokens hold item-id embeddings under this config (``EMBEDS_ITEM_IDS``; a model whose
        items may be their semantic IDs alone overrides it)."""
        return self.EMBEDS_ITEM_IDS

    def trains_item_softmax(self, config) -> bool:
        """Whether ``repeat_bias``'s shift learns inside the next-item softmax under this config
        (``TRAINS_ITEM_SOFTMAX``; a model whose step 1 may generate either overrides it)."""
        return self.TRAINS_ITEM_SOFTMAX

    def with_history_features(self, tokens: Tensor | None, item_seq: Tensor, scale: float = 1.0) -> Tensor | None:
        """``tokens`` (``[B, N, D]``, or None: nothing yet) plus ``scale`` x the side features of the history items
        (``[B, N]``): ``scale`` puts them on the scale of the tokens they join (``sqrt(D)`` where a model multiplies
        its item embeddings by it). ``tokens`` unchanged without ``item_feature_fields`` or with
        ``history_item_features: False``."""
        if self.history_item_features is None:
            return tokens
        features = self.history_item_features(item_seq)
        features = features if scale == 1.0 else features * scale
        return features if tokens is None else tokens + features

    def _rename_legacy_keys(self, module, state_dict, prefix, *args) -> None:
        """Load hook: rename the parameters of a checkpoint saved before the model's reshaping (``LEGACY_KEYS``) or
        a later renaming (``RENAMED_KEYS``)."""
        for old, new in self.RENAMED_KEYS:
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        if prefix + self.LEGACY_MARKER not in state_dict:
            return
        for key in list(state_dict):
            name = key.removeprefix(prefix)
            for old, new in self.LEGACY_KEYS:
                if name == old or (old.endswith(".") and name.startswith(old)):
                    state_dict[prefix + new + name.removeprefix(old)] = state_dict.pop(key)
                    break

    # -- what a model implements ------------------------------------------------------------------------------

    def encode(self, interaction) -> Tensor:
        """``[B, N, D]`` states of a batch's history positions, padded only to its longest history (N)."""
        raise NotImplementedError

    def item_vectors(self, item_ids: Tensor | None = None) -> Tensor:
        """L2-normalised item vectors: ``[n_items, D]``, or ``[*item_ids.shape, D]``."""
        raise NotImplementedError

    def serve(self, interaction) -> ServingResult:
        """Every stage's scores for a batch of requests at each row's last position."""
        raise NotImplementedError

    def full_sort_predict(self, interaction):
        return self.serve(interaction).final_scores

    def predict(self, interaction):
        """``[B]`` each row's item as :meth:`serve` scores it, each distinct request served once (a model that
        scores its candidates more cheaply than the whole catalogue overrides this)."""
        requests, request_of_row = self.distinct_requests(interaction)
        scores = self.serve(requests).final_scores[request_of_row]  # [B, n_items]
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    # -- semantic IDs -----------------------------------------------------------------------------------------

    def load_semantic_ids(self, config, dataset) -> list[int]:
        """Read the items' semantic IDs (``sid_file``) for a model that generates them: the ``item_codes`` buffer
        (``[n_items, L]``; the padding item's codes are 0, never generated), the catalogue's ``trie`` (beam search)
        and its ``structure`` (exact scores, :func:`~recbole_oneranker.model.layers.sid_level_structure`).

        Returns:
            ``K_l``, the codebook size of each level (its largest code + 1).
        """
        codes = load_dataset_sids(dataset, config["sid_file"])  # [n_items, L], row 0 the padding item
        self.register_buffer("item_codes", codes.clamp(min=0), persistent=False)
        catalogue = codes[1:]
        self.trie = SIDTrie(catalogue)
        self.structure = sid_level_structure(catalogue)
        return [int(catalogue[:, level].max()) + 1 for level in range(catalogue.shape[1])]

    def semantic_ids_on(self, device: torch.device) -> tuple[SIDTrie, SIDLevelStructure]:
        """The catalogue's ``trie`` and ``structure`` on ``device``, moved there once rather than every batch."""
        if self.structure.codes.device != device:
            self.trie, self.structure = self.trie.to(device), self.structure.to(device)
        return self.trie, self.structure

    def sid_repeat_shift_gain(self, interaction, history: Tensor, intents: Tensor) -> Tensor:
        """``[B]`` what ``repeat_bias``'s shift adds to the log-probability of each row's target at its last
        position, under the SID heads' mixture held fixed (:meth:`RepeatShift.target_log_prob_change`): the shift
        fits the distribution where and as serving reads it. For a model whose ``generator`` is a
        :class:`~recbole_oneranker.model.layers.SIDGenerator`.

        Args:
            history: ``[B, N]`` the items the states read; intents: ``[B, N, H, D]`` the heads' intents at every
                position.
        """
        seq_lens = interaction[self.ITEM_SEQ_LEN]
        last = intents[torch.arange(len(intents), device=intents.device), seq_lens - 1]  # [B, H, D]
        trie, _ = self.semantic_ids_on(intents.device)

        def log_probs_of(rows: Tensor, items: Tensor) -> Tensor:
            return self.generator.mixture_prefix_log_probs(last[rows], items.unsqueeze(1) - 1, trie)[:, 0, -1]

        return self.repeat_shift.target_log_prob_change(history, interaction[self.ITEM_ID], log_probs_of)

    def item_tokens(self, item_ids: Tensor) -> Tensor:
        """``[..., D]`` the input token of items: the sum of their semantic-ID code embeddings, one table per level
        in ``self.code_inputs`` (the model's own ``nn.ModuleList``)."""
        codes = self.item_codes[item_ids]  # [..., L]
        return sum(table(codes[..., level]) for level, table in enumerate(self.code_inputs))

    # -- targets ----------------------------------------------------------------------------------------------

    def next_field(self, interaction, field: str, seq_len: int, offset: int = 1) -> Tensor:
        """``[B, N]``: ``field`` of the interaction ``offset`` steps after each position (later history entries,
        then the target's); 0 where that is past the target. ``field`` is a target column, its history is
        ``<field>_list``."""
        history = interaction[field + self.LIST_SUFFIX][:, :seq_len]
        later = history[:, offset:]
        following = F.pad(later, (0, history.shape[1] - later.shape[1]))  # [B, N]: history[t + offset], 0 past it
        rows = torch.arange(len(history), device=history.device)
        target_position = interaction[self.ITEM_SEQ_LEN] - offset  # the position whose offset-th next is the target
        has_target = target_position >= 0
        following[rows[has_target], target_position[has_target]] = interaction[field][has_target].to(following.dtype)
        return following

    def next_items(self, interaction, seq_len: int, offset: int = 1) -> Tensor:
        """``[B, N]`` the item ``offset`` steps after each position (1: the next history item, then the target);
        0 = none."""
        return self.next_field(interaction, self.ITEM_ID, seq_len, offset)

    def next_items_ahead(self, interaction, seq_len: int, count: int) -> Tensor:
        """``[B, N, count]`` the 1st to ``count``-th items after each position (0 = none): the targets of
        multi-token prediction, head ``j`` learning the ``j``-th."""
        return torch.stack([self.next_items(interaction, seq_len, offset) for offset in range(1, count + 1)], dim=-1)

    @staticmethod
    def sample_positions(seq_lens: Tensor, count: int) -> Tensor:
        """``[B, count]`` training positions of each row: its last, then ``count - 1`` uniform draws (with
        replacement) among its positions."""
        last = (seq_lens - 1).unsqueeze(1)
        if count <= 1:
            return last
        draws = torch.rand(len(seq_lens), count - 1, device=seq_lens.device)
        return torch.cat([last, (draws * seq_lens.unsqueeze(1)).long()], dim=1)

    def feedback_levels(self, interaction, seq_len: int) -> Tensor:
        """``[B, N]`` feedback level of each history token: 1 + the number of cascade stages its interaction
        reached; 0 = padding."""
        history = interaction[self.ITEM_SEQ][:, :seq_len]
        reached = sum((interaction[f + self.LIST_SUFFIX][:, :seq_len] > 0).long() for f in self.cascade_fields)
        return torch.where(history > 0, 1 + reached, torch.zeros_like(history))

    def stage_labels(self, interaction, seq_len: int) -> Tensor:
        """``[B, N, S]``: for each position, which cascade stages the next interaction reached (one stage, 1 for
        every real position, without a cascade)."""
        if not self.cascade_fields:
            return (self.next_items(interaction, seq_len) > 0).float().unsqueeze(-1)
        return torch.stack([self.next_field(interaction, f, seq_len).float() for f in self.cascade_fields], dim=-1)

    def normalised_values(self, interaction, seq_len: int) -> Tensor | None:
        """``[B, N]`` value of the next interaction, scaled to mean 1 over the batch's real positions; None without
        a value field."""
        if not self.value_field:
            return None
        values = self.next_field(interaction, self.value_field, seq_len).float()
        real = self.next_items(interaction, seq_len) > 0
        return values / values[real].mean().clamp(min=1e-6)

    def request_timestamps(self, interaction, seq_len: int) -> Tensor | None:
        """``[B, N + 1]``: the history's times, with the target's time (the request) at each row's length; None
        when the model does not read time."""
        if not self.use_time:
            return None
        history = interaction[self.TIME_SEQ][:, :seq_len]
        timestamps = F.pad(history, (0, 1))
        rows = torch.arange(len(history), device=history.device)
        timestamps[rows, interaction[self.ITEM_SEQ_LEN]] = interaction[self.TIME].to(timestamps.dtype)
        return timestamps

    # -- length buckets ---------------------------------------------------------------------------------------

    def length_buckets(self, item_seq_len: Tensor) -> list[Tensor]:
        """Row indices grouped by length, so each group is padded only to its own longest sequence.

        Off the CPU, one group unless ``length_buckets_on_gpu``: a GPU pays per kernel launch more than per
        padded position, and each bucket launches the whole stack's kernels again."""
        order = torch.argsort(item_seq_len)
        on_cpu = item_seq_len.device.type == "cpu"
        if self.length_bucket_size <= 0 or not (on_cpu or self.length_buckets_on_gpu):
            return [order]
        return list(torch.split(order, self.length_bucket_size))

    @staticmethod
    def in_row_order(bucket_states: list[Tensor], buckets: list[Tensor]) -> Tensor:
        """``[B, N, D]``: the states of each bucket (rows ``buckets[i]``, ``[b_i, n_i, D]``), padded to the longest
        ``n_i`` and put back in the batch's row order."""
        longest = max(states.shape[1] for states in bucket_states)
        states = torch.cat([F.pad(states, (0, 0, 0, longest - states.shape[1])) for states in bucket_states])
        return states[torch.argsort(torch.cat(buckets))]

    def encode_by_length(self, interaction) -> Tensor:
        """``[B, N, D]``: :meth:`encode`'s states, computed by length bucket so that short histories are not padded
        to the batch's longest (padding never changes a real position's state). Evaluation batches are thousands
        of users; on Beauty, whose histories fill 9 of 50 slots on average, this cuts the encoding several-fold."""
        buckets = self.length_buckets(interaction[self.ITEM_SEQ_LEN])
        return self.in_row_order([self.encode(interaction[rows]) for rows in buckets], buckets)

    # -- seen items -------------------------------------------------------------------------------------------

    def seen_at(self, bucket, valid: Tensor) -> Tensor | None:
        """``[P, N]`` the items seen at each ``valid`` position (``[b, n]``) of ``bucket``, as the softmax takes
        them; None when neither ``history_negatives`` nor ``repeat_bias`` needs them."""
        if not self.softmax.config.history_negatives and self.repeat_shift is None:
            return None
        return seen_before(bucket[self.ITEM_SEQ][:, : valid.shape[1]])[valid]

    def shift_seen(
        self, scores: Tensor, seen: Tensor | None, items: Tensor | None = None, in_logits: bool = False
    ) -> Tensor:
        """``scores`` with the repeat shift added where the item is among the row's ``seen`` items; unchanged
        without ``repeat_bias`` or without ``seen`` (see :class:`~recbole_oneranker.model.layers.RepeatShift`).
        ``in_logits``: the scores are over the temperature (training, retrieval logits), not cosines."""
        if self.repeat_shift is None or seen is None:
            return scores
        return self.repeat_shift(scores, seen, items, temperature=self.temperature if in_logits else None)

    # -- requests ---------------------------------------------------------------------------------------------

    def distinct_requests(self, interaction):
        """``(requests, request_of_row)``: the batch's distinct rows when the scored item (and its label) are left
        out, and ``[B]`` each row's index among them.

        RecBole's sampled evaluation (the ``uniN`` / ``popN`` modes, so the candidate-set protocol) scores a user's
        candidates as copies of the user's row, one per item; encoding each history once instead of once per copy
        gives the same scores, (1 + N) times cheaper. Rows differing in any other field stay apart.
        """
        columns = [
            interaction[field].reshape(len(interaction), -1).to(torch.float64)  # exact for ids and float32 times
            for field in interaction.columns
            if field not in self._candidate_fields
        ]
        distinct, request_of_row = torch.unique(torch.cat(columns, dim=1), dim=0, return_inverse=True)
        rows = torch.arange(len(request_of_row), device=request_of_row.device)
        first_row = rows.new_full((len(distinct),), len(rows)).scatter_reduce(0, request_of_row, rows, reduce="amin")
        return interaction[first_row], request_of_row

    @staticmethod
    def user_vectors(states: Tensor) -> Tensor:
        """L2-normalised states, compared with :meth:`item_vectors` by dot product."""
        return F.normalize(states, dim=-1)
