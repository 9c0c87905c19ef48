"""GPR
################################################

Reference:
    Tencent and Tsinghua University. "GPR: Towards a Generative Pre-trained One-Model Paradigm for Large-Scale
    Advertising Recommendation." arXiv 2511.10138, 2025.

No official code is public; ``docs/gpr.md`` lists every design choice made where the paper is silent and every
deviation from it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.abstract_recommender import (
    GenerativeRecommender,
    check_user_token_fields,
    hsd_options,
    top_distinct,
)
from recbole_oneranker.model.layers import (
    RepeatExplore,
    RepeatExploreConfig,
    RepeatExploreLogProbs,
    SIDGenerator,
    SIDGeneratorConfig,
    ValueEstimator,
    visible_states,
)
from recbole_oneranker.model.layers.sid_trie import constrained_beam_search
from recbole_oneranker.model.serving import ServingResult


class EncodedRequests(NamedTuple):
    """What GPR reads of each request's history at its last position (:meth:`GPR.encode_requests`): encode once,
    then score as many candidates as needed.

    Attributes:
        users: ``[B, D]`` the HSD state (the HTE's input).
        intents: ``[B, H, D]`` the MTP heads' intents after the thinking tokens.
        copy: with ``repeat_explore``, the copy mixture's parts; else None.
        history: ``[B, N]`` the history items (0-padded), which ``repeat_bias`` shifts.
    """

    users: Tensor
    intents: Tensor
    copy: RepeatExploreLogProbs | None
    history: Tensor


class GPR(GenerativeRecommender):
    r"""GPR: one generative model over a unified token sequence, decoding semantic IDs.

    - **Unified input**: ``U`` tokens (the ``.user`` file's ``user_token_fields``) before ``I`` tokens (each history
      item as the sum of its semantic-ID code embeddings, plus its action: how far along the cascade the interaction
      went). Public data has no organic-content (``O``) or environment (``E``) tokens (``docs/gpr.md``).
    - **HSD** (heterogeneous sequence-wise decoder): HSTU blocks with the hybrid mask (``U`` tokens attend to each
      other both ways, the rest causally: ``bidirectional_prefix``), GPR's softmax attention (``attention``) and a
      token-type-aware LayerNorm + FFN after each block (``token_type_ffn``).
    - **PTD** (progressive token-wise decoder): ``num_thinking_tokens`` thinking tokens read the HSD states up to the
      position; sum-pooled, they give each of ``mtp_heads`` heads an intent, which generates the SID coarse to fine
      (:class:`~recbole_oneranker.model.layers.SIDGenerator`). ``sid_scoring`` says how a level reads the codes
      before it: ``additive`` (a user's code preference the same under every prefix) or ``gated`` (the prefix gates
      and shifts the user's query, so the preference can change with the prefix); ``tie_code_embeddings`` makes the
      generator's code vectors the history tokens' code embeddings.
    - **MTP**: head ``j`` learns the ``j``-th next item (head 1 the next one) with weight ``1 / mtp_heads``; a ranking
      serves the heads' mixture.
    - **VAFT** (``vaft: True``, e.g. from a pre-trained ``init_checkpoint``): each position's loss weighted by its
      action (``vaft_action_weights`` by cascade stages reached) and its value, normalised to mean 1 in the batch.
    - **HTE** (``use_hte``): a value per SID level and for the final item, on a stop-gradient of the trunk, trained
      on the next interaction's value (or its cascade depth); it adds ``hte_weight`` x value to the served score.

    ``full_sort_predict`` scores every item exactly (each level normalised over the trie's valid codes, as the beam
    normalises); :meth:`generate` returns top-K items by trie-constrained beam search.

    Added, off by default (not in the paper; docs/gpr.md, "Repeats"): ``repeat_explore``, a RepeatNet-style mixture
    of the generator's distribution with a copy attention over the history's items, for data where users return to
    items (:class:`~recbole_oneranker.model.layers.RepeatExplore`); ``repeat_bias``, HSTU's learned shift of every
    seen item, here of its log-probability with the distribution renormalised
    (:meth:`~recbole_oneranker.model.layers.RepeatShift.normalised`), fitted at each row's last position against
    the generator's distribution held fixed, for data where users rarely (or often) return to items.

    NOTE (deviations; docs/gpr.md): no Mixture-of-Recursions, no LLM thought tokens, no diffusion refining step; each
    level reads its prefix through an additive term or a gate, not a decoder pass, so that exact catalogue scores
    stay one product per level and gathers. DPO, HEPO and ECPO are post-training methods of a stage of its own
    (``stage: align``, ``align_method: dpo | hepo | ecpo``; docs/alignment.md) that reads :meth:`item_log_probs`,
    :meth:`item_level_log_probs`, :meth:`catalogue_log_probs` and :meth:`level_values` (the HTE is HEPO's critic).
    """

    TRAINS_ITEM_SOFTMAX = False  # it generates semantic IDs; repeat_bias shifts their paths' log-probabilities
    EMBEDS_ITEM_IDS = False  # its history tokens are semantic-ID code sums

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.user_token_fields = check_user_token_fields(config, dataset)
        self.mtp_heads = config["mtp_heads"]
        self.vaft = config["vaft"]
        depths = len(self.cascade_fields) + 1
        self.action_weights = list(config["vaft_action_weights"] or [2.0**stages for stages in range(depths)])
        self.use_hte = config["use_hte"]
        self.hte_weight = config["hte_weight"]
        self.beam_size = config["beam_size"]
        if len(self.action_weights) != depths:
            raise ConfigError(
                f"vaft_action_weights needs one weight per cascade depth (0 to {depths - 1} stages reached): "
                f"{depths} values, got {self.action_weights}"
            )
        codebook_sizes = self.load_semantic_ids(config, dataset)

        # define layers
        d = self.hidden_size
        self.encoder = self.item_sequence_encoder(
            config, dataset, len(self.user_token_fields), item_table=False, **hsd_options(config)
        )
        self.code_inputs = nn.ModuleList(nn.Embedding(size, d) for size in codebook_sizes)
        self.action_embedding = nn.Embedding(len(self.cascade_fields) + 2, d, padding_idx=0)  # 0 = padding
        self.user_token_embeddings = nn.ModuleDict(
            {field: nn.Embedding(dataset.num(field), d, padding_idx=0) for field in self.user_token_fields}
        )
        generation = SIDGeneratorConfig(
            hidden_size=d,
            codebook_sizes=codebook_sizes,
            num_heads=self.mtp_heads,
            num_thinking_tokens=config["num_thinking_tokens"],
            thinking_layers=config["thinking_layers"],
            attention_heads=config["thinking_heads"],
            dropout=self.dropout_prob,
            scoring=config["sid_scoring"],
        )
        tied = self.code_inputs if config["tie_code_embeddings"] else None  # the history tokens' code tables
        self.generator = SIDGenerator(generation, code_tables=tied, code_scale=math.sqrt(d))
        self.hte = ValueEstimator(generation) if self.use_hte else None
        # Not in the paper (docs/gpr.md, "Repeats"): the next item may be copied from the history.
        self.repeat_explore = RepeatExplore(RepeatExploreConfig(d)) if config["repeat_explore"] else None

        # parameters initialization
        for embedding in (*self.code_inputs, self.action_embedding, *self.user_token_embeddings.values()):
            nn.init.normal_(embedding.weight, std=0.02)
        if config["init_checkpoint"]:
            self._load_pretrained(config["init_checkpoint"])

    def _load_pretrained(self, path: str) -> None:
        """Start from a trained GPR checkpoint's weights (VAFT fine-tunes a pre-trained model)."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = self.load_state_dict(checkpoint["state_dict"], strict=False)
        if unexpected or [name for name in missing if not name.startswith("hte.")]:
            raise ConfigError(f"init_checkpoint {path} is not a GPR checkpoint of this shape: {missing or unexpected}")

    # -- HSD: the unified sequence ----------------------------------------------------------------------------

    def encode(self, interaction) -> Tensor:
        seq_len = int(interaction[self.ITEM_SEQ_LEN].max())
        item_seq = interaction[self.ITEM_SEQ][:, :seq_len]
        tokens = self.item_tokens(item_seq)
        tokens = self.with_history_features(tokens, item_seq) * math.sqrt(self.hidden_size)
        tokens = tokens + self.action_embedding(self.feedback_levels(interaction, seq_len))
        prefix = None
        if self.user_token_fields:
            users = [self.user_token_embeddings[field](interaction[field]) for field in self.user_token_fields]
            prefix = torch.stack(users, dim=1) * math.sqrt(self.hidden_size)  # [B, P, D]
        timestamps = self.request_timestamps(interaction, seq_len)
        return self.forward(tokens, interaction[self.ITEM_SEQ_LEN], timestamps, prefix)

    def forward(
        self,
        tokens: Tensor,
        item_seq_len: Tensor,
        timestamps: Tensor | None = None,
        prefix: Tensor | None = None,
    ) -> Tensor:
        """``[B, N, D]`` HSD states of embedded history tokens (see :meth:`SequenceEncoder.encode_tokens`)."""
        return self.encoder.encode_tokens(tokens, item_seq_len, timestamps, prefix)

    # -- training ---------------------------------------------------------------------------------------------

    def calculate_loss(self, interaction):
        generation, value, repeat_shift, positions = 0.0, 0.0, 0.0, 0
        for rows in self.length_buckets(interaction[self.ITEM_SEQ_LEN]):
            bucket = interaction[rows]
            states = self.encode(bucket)  # [b, n, D]
            n = states.shape[1]
            history = bucket[self.ITEM_SEQ][:, :n]  # [b, n] the items the states read
            every_position = torch.arange(n, device=states.device).expand(len(states), -1)
            intents = self.generator.intents(states, visible_states(n, every_position, bucket[self.ITEM_SEQ_LEN]))
            targets = self.next_items_ahead(bucket, n, self.mtp_heads)  # [b, n, H]
            valid = targets[..., 0] > 0  # [b, n] positions with a next item
            head_targets = targets[valid]  # [P, H]
            log_probs = self.generator.path_log_probs(intents[valid], self.item_codes[head_targets]).sum(-1)  # [P, H]
            if self.repeat_explore is not None:  # the next item (head 1's) may also be copied from the history
                copied = self._copy_parts(history, states, valid).of_targets(head_targets[:, 0], log_probs[:, 0])
                log_probs = torch.cat([copied.unsqueeze(1), log_probs[:, 1:]], dim=1)
            weights = (head_targets > 0).float() / self.mtp_heads  # a head with no j-th next item learns nothing
            if self.vaft:
                weights = weights * self._vaft_weights(bucket, n, valid).unsqueeze(-1)
            generation = generation - (weights * log_probs).sum()
            if self.hte is not None:
                estimates = self.hte(states[valid], self.item_codes[head_targets[:, 0]])  # [P, L]
                value = value + (estimates - self._value_targets(bucket, n, valid).unsqueeze(-1)).pow(2).mean(-1).sum()
            if self.repeat_shift is not None:
                repeat_shift = repeat_shift - self.sid_repeat_shift_gain(bucket, history, intents).sum()
            positions += int(valid.sum())
        positions = max(positions, 1)
        losses = [generation / positions]
        if self.hte is not None:
            losses.append(value / positions)
        if self.repeat_shift is not None:  # one term per row: the shift learns at each row's last position
            losses.append(repeat_shift / len(interaction))
        return tuple(losses) if len(losses) > 1 else losses[0]

    def _copy_parts(self, history: Tensor, states: Tensor, positions: Tensor) -> RepeatExploreLogProbs:
        """The repeat-explore mixture's parts at the ``positions`` (``[B, N]`` bool) of the rows' HSD ``states``
        (``[B, N, D]``) of the ``history`` items (``[B, N]``): each position copies from the items up to itself."""
        rows, columns = positions.nonzero(as_tuple=True)
        return self.repeat_explore.at_positions(states, history, rows, columns)

    def _stages_reached(self, interaction, seq_len: int, valid: Tensor) -> Tensor:
        """``[P]`` how many cascade stages the next interaction of each valid position reached (0 without one)."""
        if not self.cascade_fields:
            return torch.zeros(int(valid.sum()), dtype=torch.long, device=valid.device)
        return self.stage_labels(interaction, seq_len)[valid].sum(-1).long()

    def _normalised_values(self, interaction, seq_len: int, valid: Tensor) -> Tensor | None:
        """``[P]`` the next interaction's value over the batch's mean value, or None without a value field."""
        values = self.normalised_values(interaction, seq_len)
        return None if values is None else values[valid]

    def _vaft_weights(self, interaction, seq_len: int, valid: Tensor) -> Tensor:
        """``[P]`` VAFT's weight of each valid position: its action's weight, times its normalised value."""
        table = torch.tensor(self.action_weights, device=valid.device)
        weights = table[self._stages_reached(interaction, seq_len, valid)]
        values = self._normalised_values(interaction, seq_len, valid)
        return weights if values is None else weights * values

    def _value_targets(self, interaction, seq_len: int, valid: Tensor) -> Tensor:
        """``[P]`` what the HTE learns to predict: the normalised value, else 1 + the cascade depth reached."""
        values = self._normalised_values(interaction, seq_len, valid)
        return values if values is not None else 1.0 + self._stages_reached(interaction, seq_len, valid).float()

    # -- inference --------------------------------------------------------------------------------------------

    def encode_requests(self, interaction) -> EncodedRequests:
        """Each row's history read at its last position (:class:`EncodedRequests`), what :meth:`serve`,
        :meth:`generate` and the alignment stage's log-probabilities and values read."""
        states = self.encode_by_length(interaction)
        seq_lens = interaction[self.ITEM_SEQ_LEN]
        positions = (seq_lens - 1).unsqueeze(1)  # [B, 1]
        intents = self.generator.intents(states, visible_states(states.shape[1], positions, seq_lens))[:, 0]
        history = interaction[self.ITEM_SEQ][:, : states.shape[1]]
        copy = None
        if self.repeat_explore is not None:
            last = torch.zeros(states.shape[:2], dtype=torch.bool, device=states.device)
            copy = self._copy_parts(history, states, last.scatter_(1, positions, True))
        return EncodedRequests(self.gather_indexes(states, seq_lens - 1), intents, copy, history)

    def serve(self, interaction) -> ServingResult:
        """Every item's log-probability under the heads' mixture (+ ``hte_weight`` x the HTE's final value)."""
        scores = self._catalogue_scores(self.encode_requests(interaction))
        return ServingResult(retrieval_scores=scores, final_scores=scores)

    def _catalogue_scores(self, requests: EncodedRequests) -> Tensor:
        """``[B, n_items]`` the served score of every item: the heads' mixture (with the history's copy mixed in
        under ``repeat_explore``, the seen items shifted under ``repeat_bias``), + the HTE's weighted value."""
        scores = self._mixture_catalogue_log_probs(requests.intents)
        if requests.copy is not None:
            scores = requests.copy.of_catalogue(scores)
        if self.repeat_shift is not None:
            scores = self.repeat_shift.normalised(scores, requests.history)
        if self.hte is not None and self.hte_weight:
            values = self.hte.catalogue_values(requests.users, self.item_codes[1:])
            scores = scores + F.pad(self.hte_weight * values, (1, 0))
        return scores

    def _mixture_catalogue_log_probs(self, intents: Tensor) -> Tensor:
        """``[B, n_items]`` every item's log-probability under the heads' mixture for intents ``[B, H, D]`` (the
        padding item 0: ``-inf``)."""
        _, structure = self.semantic_ids_on(intents.device)
        scores = self.generator.mixture_catalogue_log_probs(intents, structure)  # [B, N]
        return F.pad(scores, (1, 0), value=float("-inf"))  # the padding item 0

    # -- preference alignment (docs/alignment.md) --------------------------------------------------------------

    def catalogue_log_probs(self, requests: EncodedRequests) -> Tensor:
        """``[B, n_items]`` the log-probability of generating each item at each request's last position: the
        distribution :meth:`item_log_probs` scores (the heads' mixture, each level normalised over the trie; the
        padding item 0 ``-inf``), over the whole catalogue at once. A policy-gradient stage samples from it.

        Raises:
            ConfigError: with ``repeat_explore`` or ``repeat_bias``.
        """
        self._check_generator_alone()
        return self._mixture_catalogue_log_probs(requests.intents)

    def _check_generator_alone(self) -> None:
        """The alignment APIs score the SID generator alone: refuse a model that serves something else."""
        if self.repeat_explore is not None or self.repeat_shift is not None:
            raise ConfigError(
                "item log-probabilities cover the SID generator alone: set repeat_explore and repeat_bias to False"
            )

    def item_log_probs(self, requests: EncodedRequests, items: Tensor) -> Tensor:
        """``[B, C]`` the log-probability of generating each of ``items`` (``[B, C]`` real item ids, > 0) at each
        request's last position: the heads' mixture, each level normalised over the trie's valid children, as
        :meth:`serve` scores the catalogue (without the HTE's ``hte_weight`` x value). Differentiable.

        Raises:
            ConfigError: with ``repeat_explore`` or ``repeat_bias`` (what they serve has no such form).
        """
        self._check_generator_alone()
        return self._mixture_prefix_log_probs(requests.intents, items)[..., -1]

    def item_level_log_probs(self, requests: EncodedRequests, items: Tensor) -> Tensor:
        """``[B, C, L]`` the mixture's conditional log-probability of each SID level of ``items`` (``[B, C]``) given
        the levels before it: with ``m_l = logsumexp_h(sum_{k <= l} log p_h(z_k | z_<k)) - log H`` (the mixture's
        log-probability of the item's first ``l`` codes), level ``l``'s entry is ``m_l - m_{l-1}``; the levels sum to
        :meth:`item_log_probs`. Differentiable.

        Raises:
            ConfigError: with ``repeat_explore`` or ``repeat_bias``.
        """
        self._check_generator_alone()
        prefixes = self._mixture_prefix_log_probs(requests.intents, items)
        return torch.diff(prefixes, dim=-1, prepend=torch.zeros_like(prefixes[..., :1]))

    def _mixture_prefix_log_probs(self, intents: Tensor, items: Tensor) -> Tensor:
        """``[B, C, L]`` ``m_l``: the heads' mixture (intents ``[B, H, D]``) of the log-probability of the first
        ``l + 1`` codes of each of ``items`` (``[B, C]``)."""
        trie, _ = self.semantic_ids_on(items.device)
        return self.generator.mixture_prefix_log_probs(intents, items - 1, trie)

    def level_values(self, requests: EncodedRequests, items: Tensor) -> Tensor:
        """``[B, C, L]`` the HTE's value estimate after each SID level of ``items`` (``[B, C]``) at each request's
        last position (the critic of a policy-gradient stage).

        Raises:
            ConfigError: without ``use_hte``.
        """
        if self.hte is None:
            raise ConfigError("level values come from the HTE: set use_hte: True")
        count = items.shape[1]
        users = requests.users.repeat_interleave(count, dim=0)  # [BC, D]
        values = self.hte(users, self.item_codes[items].flatten(0, 1))  # [BC, L]
        return values.view(len(items), count, -1)

    @torch.no_grad()
    def generate(self, interaction, k: int | None = None) -> tuple[Tensor, Tensor]:
        """Top-``k`` items (default ``beam_size``) by trie-constrained beam search: each head keeps ``k`` valid SID
        paths, the union is ranked by the served score (the heads' mixture, + the HTE's value when weighted).

        Returns:
            ``items`` ``[B, k]`` internal item ids (0 where fewer exist) and their scores ``[B, k]``.
        """
        k = k or self.beam_size
        requests = self.encode_requests(interaction)
        batch, heads, _ = requests.intents.shape
        trie, _ = self.semantic_ids_on(requests.users.device)
        flat = requests.intents.reshape(batch * heads, 1, -1)

        def step(prefixes: Tensor, level: int) -> Tensor:  # [BH, P, level] -> [BH, P, K_level]
            return self.generator.level_logits(flat.expand(-1, prefixes.shape[1], -1), prefixes, level)

        _, _, found = constrained_beam_search(step, trie, batch * heads, k)
        found = found.view(batch, heads * k) + 1  # trie rows -> internal item ids (0: no item)
        if self.repeat_explore is not None or self.repeat_shift is not None:  # seen items compete with the beam's
            found = torch.cat([found, requests.history], dim=1)
        return top_distinct(found, self._catalogue_scores(requests).gather(1, found), k)
