"""OneRec
################################################

Reference:
    Deng et al. "OneRec: Unifying Retrieve and Rank with Generative Recommender and Iterative Preference
    Alignment." arXiv 2502.18965, 2025; Kuaishou, "OneRec Technical Report." arXiv 2506.13695, 2025.

No code of either paper is public; ``docs/onerec.md`` lists every design choice made where the papers are silent and
every deviation from them.
"""

from __future__ import annotations

from logging import getLogger

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.abstract_recommender import GenerativeRecommender, check_user_token_fields, top_distinct
from recbole_oneranker.model.layers import (
    EncoderDecoderConfig,
    HistoryEncoder,
    MixtureOfExperts,
    MoEConfig,
    RepeatExplore,
    RepeatExploreConfig,
    RepeatExploreLogProbs,
    SessionDecoder,
    SIDGenerator,
    SIDGeneratorConfig,
    visible_states,
)
from recbole_oneranker.model.layers.sid_trie import StepFunction, constrained_beam_search
from recbole_oneranker.model.serving import ServingResult


class OneRec(GenerativeRecommender):
    r"""OneRec: an encoder-decoder that generates the next session of items as semantic IDs.

    - **Encoder**: a context token, the ``.user`` file's ``user_token_fields`` and the history's items (each the
      sum of its semantic-ID code embeddings), read by a bidirectional transformer. Where the dataset has a cascade,
      only the *positive-feedback* history is read: the entries that reached at least ``positive_stages`` stages.
    - **Decoder**: from a BOS token, a causal decoder generates a session of the next ``session_length`` items
      (the paper's 5), cross-attending to the encoder; its feed-forward blocks are a sparse mixture of
      ``num_experts`` experts with top-``experts_per_token`` routing and loss-free bias balancing (``moe: False``:
      a dense block of the same active width). :meth:`routing_load` reports the experts' load, logged every epoch.
    - **Codes**: decoder step ``j`` (BOS, then item ``j - 1``) yields item ``j``'s ``L`` codes coarse to fine with
      the additive prefix term of :class:`~recbole_oneranker.model.layers.SIDGenerator`; next-token cross-entropy
      over every code of every session item.
    - **Training**: one row per user; the encoder re-reads the prefix at ``decoder_positions`` positions of the row
      (the last and uniform draws), each with the next ``session_length`` items as its target session.
    - **Serving**: every item's exact log-probability as the session's first item (each level normalised over the
      trie's valid codes), from one decoder step on BOS; :meth:`generate` is the trie-constrained beam over it and
      :meth:`generate_sessions` the beam over whole sessions, decoding from a key/value cache.
    - Added, off by default (not in the paper): ``repeat_explore``, the first item's distribution mixed with a copy
      attention over the history's items (:class:`~recbole_oneranker.model.layers.RepeatExplore`); ``repeat_bias``,
      GPR's learned shift of the seen items' log-probabilities, renormalised, fitted at each row's last position
      (:meth:`~recbole_oneranker.model.layers.RepeatShift.normalised`; the session's later items keep the
      generator's distribution).

    NOTE (deviations; docs/onerec.md): one decoder token per item, not per code, with the codes of an item read
    from that token through an additive prefix term, which makes exact full-catalogue scores a product and gathers;
    no lifelong or short-term pathways. Iterative Preference Alignment is a stage of its own (``stage: align``,
    ``align_method: ipa``; docs/alignment.md) over :meth:`generate_sessions` and :meth:`last_session_log_probs`.
    """

    TRAINS_ITEM_SOFTMAX = False  # it generates semantic IDs
    EMBEDS_ITEM_IDS = False  # its history tokens are semantic-ID code sums

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.cascade_fields = list(config["cascade_fields"] or [])
        self.positive_stages = config["positive_stages"] if self.cascade_fields else 0
        self.user_token_fields = check_user_token_fields(config, dataset)
        self.session_length = config["session_length"]
        self.decoder_positions = config["decoder_positions"]
        self.beam_size = config["beam_size"]
        if not 0 <= self.positive_stages <= len(self.cascade_fields):
            raise ConfigError(
                f"positive_stages must be in [0, {len(self.cascade_fields)}] (the cascade's stages), "
                f"got {self.positive_stages}"
            )
        if self.session_length < 1 or self.decoder_positions < 1:
            raise ConfigError("session_length and decoder_positions must be at least 1")
        codebook_sizes = self.load_semantic_ids(config, dataset)

        # define layers
        d = self.hidden_size
        sizes = self._layer_sizes(config)
        self.encoder = HistoryEncoder(sizes)
        self.decoder = SessionDecoder(sizes)
        self.code_inputs = nn.ModuleList(nn.Embedding(size, d) for size in codebook_sizes)
        self.context_token = nn.Parameter(torch.zeros(d))  # always readable: no request has an empty memory
        self.bos_token = nn.Parameter(torch.zeros(d))
        self.user_token_embeddings = nn.ModuleDict(
            {field: nn.Embedding(dataset.num(field), d, padding_idx=0) for field in self.user_token_fields}
        )
        self.generator = SIDGenerator(
            SIDGeneratorConfig(hidden_size=d, codebook_sizes=codebook_sizes, num_heads=1, num_thinking_tokens=0)
        )
        # Not in the paper (docs/onerec.md, "Repeats"): the session's first item may be copied from the history.
        self.repeat_explore = RepeatExplore(RepeatExploreConfig(d)) if config["repeat_explore"] else None

        # parameters initialization
        for embedding in (*self.code_inputs, *self.user_token_embeddings.values()):
            nn.init.normal_(embedding.weight, std=0.02)
        for token in (self.context_token, self.bos_token, self.encoder.positions.weight, self.decoder.positions.weight):
            nn.init.normal_(token, std=0.02)

    def _layer_sizes(self, config) -> EncoderDecoderConfig:
        """The encoder's and decoder's sizes from the config; a size the layers refuse is a config error."""
        try:
            experts = MoEConfig(
                hidden_size=self.hidden_size,
                expert_inner_size=config["expert_inner_size"],
                num_experts=config["num_experts"],
                top_k=config["experts_per_token"],
                bias_update_rate=config["balancing_rate"],
                sparse=config["moe"],
            )
            sizes = EncoderDecoderConfig(
                hidden_size=self.hidden_size,
                feed_forward=experts,
                num_heads=config["n_heads"],
                encoder_layers=config["encoder_layers"],
                decoder_layers=config["decoder_layers"],
                encoder_inner_size=config["encoder_inner_size"],
                max_memory_len=1 + len(self.user_token_fields) + self.max_seq_length,
                max_session_len=self.session_length,
                dropout=self.dropout_prob,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from error
        return sizes

    # -- encoder ----------------------------------------------------------------------------------------------

    def readable_history(self, interaction, seq_len: int) -> Tensor:
        """``[B, N]`` the history entries the encoder reads: real ones that reached ``positive_stages`` stages."""
        history = interaction[self.ITEM_SEQ][:, :seq_len]
        reached = sum((interaction[field + self.LIST_SUFFIX][:, :seq_len] > 0).long() for field in self.cascade_fields)
        return (history > 0) & (reached >= self.positive_stages)

    def encode(self, interaction, rows: Tensor | None = None, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The encoder's memory ``[C, M, D]`` and its readable tokens ``[C, M]`` for ``C`` requests: row ``rows[c]``
        of the batch with its history up to ``positions[c]`` (default: every row with its whole history)."""
        seq_lens = interaction[self.ITEM_SEQ_LEN]
        rows = torch.arange(len(seq_lens), device=seq_lens.device) if rows is None else rows
        positions = seq_lens[rows] - 1 if positions is None else positions
        seq_len = int(positions.max()) + 1  # nothing after the furthest position is read
        history = interaction[self.ITEM_SEQ][rows, :seq_len]
        readable = self.readable_history(interaction, seq_len)[rows]
        readable &= visible_states(seq_len, positions.unsqueeze(1), seq_lens[rows])[:, 0]  # the prefix up to p
        users = [self.user_token_embeddings[field](interaction[field][rows]) for field in self.user_token_fields]
        prefix = torch.stack([self.context_token.expand(len(rows), -1), *users], dim=1)  # [C, 1 + U, D]
        history_tokens = self.item_tokens(history)
        history_tokens = self.with_history_features(history_tokens, history)
        tokens = torch.cat([prefix, history_tokens], dim=1)  # [C, 1 + U + n, D]
        visible = F.pad(readable, (tokens.shape[1] - seq_len, 0), value=True)
        return self.encoder(tokens, visible), visible

    # -- decoder ----------------------------------------------------------------------------------------------

    def intents(self, memory: Tensor, visible: Tensor, generated: Tensor) -> Tensor:
        """``[C, T, D]`` the decoder's intent for each next item after BOS and ``generated`` items (``[C, T - 1]``):
        intent ``t`` generates item ``t``'s codes."""
        return self._intents_of(self.decoder(self.decoder_tokens(generated), memory, visible))

    def decoder_tokens(self, generated: Tensor) -> Tensor:
        """``[C, T, D]`` the decoder's input: BOS, then the tokens of the ``generated`` items (``[C, T - 1]``)."""
        return torch.cat([self.bos_token.expand(len(generated), 1, -1), self.item_tokens(generated)], dim=1)

    def _intents_of(self, states: Tensor) -> Tensor:
        """``[C, T, D]`` the generator's (one head's) intent read from each decoder state ``[C, T, D]``."""
        own_state = torch.eye(states.shape[1], dtype=torch.bool, device=states.device).expand(len(states), -1, -1)
        return self.generator.intents(states, own_state)[:, :, 0]

    def _code_logits(self, intents: Tensor) -> StepFunction:
        """The trie beam's step for requests with ``intents`` ``[C, 1, D]``: next-code logits of their prefixes."""

        def step(prefixes: Tensor, level: int) -> Tensor:  # [C, P, level] -> [C, P, K_level]
            return self.generator.level_logits(intents.expand(-1, prefixes.shape[1], -1), prefixes, level)

        return step

    def session_log_probs(self, interaction, rows: Tensor, positions: Tensor, sessions: Tensor) -> Tensor:
        """``[C, m]`` teacher-forced log-probability of each item of ``sessions`` (``[C, m]`` item ids) after the
        history of row ``rows[c]`` up to ``positions[c]`` and the session's earlier items (codebook softmax; with
        ``repeat_explore``, the first item's under the mixture with the copy of a history item)."""
        return self._session_log_probs(interaction, rows, positions, sessions)[0]

    def _session_log_probs(
        self, interaction, rows: Tensor, positions: Tensor, sessions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`session_log_probs` and the first item's intents ``[C, 1, D]`` (what ``repeat_bias`` reads)."""
        memory, visible = self.encode(interaction, rows, positions)
        intents = self.intents(memory, visible, sessions[:, :-1])  # [C, m, D]
        codes = self.item_codes[sessions]  # [C, m, L]
        per_level = self.generator.path_log_probs(intents.flatten(0, 1).unsqueeze(1), codes.flatten(0, 1).unsqueeze(1))
        log_probs = per_level.sum(-1).view_as(sessions)
        if self.repeat_explore is not None:
            copy = self._copy_parts(interaction, rows, positions, self.history_memory(memory), intents[:, 0])
            first = copy.of_targets(sessions[:, 0], log_probs[:, 0])
            log_probs = torch.cat([first.unsqueeze(1), log_probs[:, 1:]], dim=1)
        return log_probs, intents[:, :1]

    def last_session_log_probs(self, interaction, sessions: Tensor) -> Tensor:
        """``[B, N]`` the log-probability of each of ``N`` sessions per request (``sessions`` ``[B, N, m]`` item
        ids, 0 past a session's end, e.g. :meth:`generate_sessions`'s) after the request's whole history: the sum
        over the session's items of :meth:`session_log_probs`. Differentiable (IPA's DPO reads it)."""
        batch, count, _ = sessions.shape
        rows = torch.arange(batch, device=sessions.device).repeat_interleave(count)
        flat = sessions.flatten(0, 1)  # [B N, m]
        log_probs = self.session_log_probs(interaction, rows, interaction[self.ITEM_SEQ_LEN][rows] - 1, flat)
        return log_probs.masked_fill(flat == 0, 0.0).sum(-1).view(batch, count)

    def history_memory(self, memory: Tensor) -> Tensor:
        """``[C, n, D]`` the encoder's states of the history tokens, from its whole memory ``[C, 1 + U + n, D]``
        (the context token and the user tokens come first)."""
        return memory[:, 1 + len(self.user_token_fields) :]

    def _copy_parts(
        self, interaction, rows: Tensor, positions: Tensor, history_states: Tensor, users: Tensor
    ) -> RepeatExploreLogProbs:
        """The repeat-explore mixture's parts for request ``c`` = row ``rows[c]`` at ``positions[c]``: the user
        state ``users[c]`` copies from the history items up to the position (all of them, read by the encoder or
        not), keyed by their encoder states ``history_states`` (``[C, n, D]``)."""
        n = history_states.shape[1]
        history = interaction[self.ITEM_SEQ][rows, :n]
        visible = (torch.arange(n, device=history.device) <= positions.unsqueeze(1)) & (history > 0)
        return self.repeat_explore(users, history_states, history, visible)

    # -- training ---------------------------------------------------------------------------------------------

    def session_targets(self, interaction, seq_len: int) -> Tensor:
        """``[B, N, m]`` the session after each position: the next ``session_length`` items (0 past the target)."""
        offsets = range(1, self.session_length + 1)
        return torch.stack([self.next_items(interaction, seq_len, offset) for offset in offsets], dim=-1)

    def calculate_loss(self, interaction):
        loss, repeat_shift, targets = 0.0, 0.0, 0
        for rows in self.length_buckets(interaction[self.ITEM_SEQ_LEN]):
            bucket = interaction[rows]
            seq_lens = bucket[self.ITEM_SEQ_LEN]
            positions = self.sample_positions(seq_lens, self.decoder_positions)  # [b, R]
            row = torch.arange(len(bucket), device=positions.device).repeat_interleave(positions.shape[1])
            position = positions.flatten()
            sessions = self.session_targets(bucket, int(seq_lens.max()))[row, position]  # [C, m]
            present = sessions > 0  # a session cut short by the end of the data has fewer items
            log_probs, first_intents = self._session_log_probs(bucket, row, position, sessions)
            loss = loss - log_probs[present].sum()
            if self.repeat_shift is not None:  # each row's first position is its last (sample_positions)
                repeat_shift = (
                    repeat_shift - self._repeat_shift_gain(bucket, first_intents[:: positions.shape[1]]).sum()
                )
            targets += int(present.sum())
        if self.repeat_shift is None:
            return loss / max(targets, 1)
        return loss / max(targets, 1), repeat_shift / len(interaction)  # one term per row

    def _repeat_shift_gain(self, interaction, first_intents: Tensor) -> Tensor:
        """``[B]`` what ``repeat_bias``'s shift adds to the log-probability of each row's target as the session's
        first item after its whole history (``first_intents``: ``[B, 1, D]``), the served distribution held fixed."""
        trie, _ = self.semantic_ids_on(first_intents.device)

        def log_probs_of(rows: Tensor, items: Tensor) -> Tensor:
            per_level = self.generator.item_level_log_probs(first_intents[rows], items.unsqueeze(1) - 1, trie)
            return per_level.sum(-1)[:, 0, 0]  # [K, H = 1, C = 1]

        return self.repeat_shift.target_log_prob_change(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_ID], log_probs_of
        )

    def routing_load(self) -> Tensor | None:
        """``[decoder_layers, E]`` each expert's share of the routed tokens since :meth:`reset_routing_load` (rows
        sum to 1; uniform is ``1 / E``); None for the dense ablation."""
        mixtures = self._mixtures()
        if not mixtures:
            return None
        load = torch.stack([mixture.expert_load() for mixture in mixtures])
        return load / load.sum(dim=1, keepdim=True).clamp(min=1)

    def reset_routing_load(self) -> None:
        for mixture in self._mixtures():
            mixture.reset_load()

    def on_train_epoch_start(self, epoch: int) -> None:
        """Trainer hook: log each expert's share of the tokens routed since the previous epoch began (its training
        and validation), then count afresh."""
        load = self.routing_load()
        if load is not None and epoch > 0:
            shares = "; ".join(" ".join(f"{share:.3f}" for share in layer) for layer in load.tolist())
            uniform = 1 / load.shape[1]
            getLogger().info(f"expert load over epoch {epoch - 1}, per decoder layer (uniform {uniform:.3f}): {shares}")
        self.reset_routing_load()

    def _mixtures(self) -> list[MixtureOfExperts]:
        return [layer.ffn for layer in self.decoder.layers if isinstance(layer.ffn, MixtureOfExperts)]

    # -- inference --------------------------------------------------------------------------------------------

    def first_item_intents(self, interaction) -> Tensor:
        """``[B, 1, D]`` the decoder's intent on BOS: what generates the session's first item."""
        return self._first_item_states(interaction)[0]

    def _first_item_states(self, interaction) -> tuple[Tensor, Tensor | None]:
        """One encoder pass by length bucket: the first item's intents ``[B, 1, D]`` and, with ``repeat_explore``,
        the history memory the copy attention reads (``[B, N, D]``; else None)."""
        buckets = self.length_buckets(interaction[self.ITEM_SEQ_LEN])
        intents, memories = [], []
        for rows in buckets:
            bucket = interaction[rows]
            memory, visible = self.encode(bucket)
            intents.append(self.intents(memory, visible, bucket[self.ITEM_SEQ][:, :0]))  # nothing generated yet
            if self.repeat_explore is not None:
                memories.append(self.history_memory(memory))
        return self.in_row_order(intents, buckets), self.in_row_order(memories, buckets) if memories else None

    def serve(self, interaction) -> ServingResult:
        """Every item's exact log-probability as the first item of the generated session (with
        ``repeat_explore``, mixed with the copy of a history item; with ``repeat_bias``, the seen items shifted)."""
        scores = self._first_item_scores(interaction, *self._first_item_states(interaction))
        return ServingResult(retrieval_scores=scores, final_scores=scores)

    def _first_item_scores(self, interaction, intents: Tensor, memory: Tensor | None) -> Tensor:
        """``[B, n_items]`` :meth:`serve`'s scores from the first item's intents and the history memory."""
        scores = self.generator.catalogue_log_probs(intents, self.semantic_ids_on(intents.device)[1])[:, 0]  # [B, N]
        scores = F.pad(scores, (1, 0), value=float("-inf"))  # the padding item 0
        if memory is not None:
            seq_lens = interaction[self.ITEM_SEQ_LEN]
            rows = torch.arange(len(seq_lens), device=seq_lens.device)
            scores = self._copy_parts(interaction, rows, seq_lens - 1, memory, intents[:, 0]).of_catalogue(scores)
        if self.repeat_shift is not None:
            scores = self.repeat_shift.normalised(scores, interaction[self.ITEM_SEQ])
        return scores

    @torch.no_grad()
    def generate(self, interaction, k: int | None = None) -> tuple[Tensor, Tensor]:
        """Top-``k`` first items (default ``beam_size``) by trie-constrained beam search over their codes.

        Returns:
            ``items`` ``[B, k]`` internal item ids (0 where the catalogue has fewer) and their scores ``[B, k]``,
            each equal to the item's :meth:`full_sort_predict` score (with ``repeat_explore`` or ``repeat_bias``,
            the beam's items and the history's, ranked by that score).
        """
        k = k or self.beam_size
        intents, memory = self._first_item_states(interaction)  # [B, 1, D], [B, N, D] or None
        trie, _ = self.semantic_ids_on(intents.device)
        _, scores, found = constrained_beam_search(self._code_logits(intents), trie, len(intents), k)
        found = found + 1  # trie rows -> internal item ids; a missing item (-1) becomes the padding item
        if memory is None and self.repeat_shift is None:
            return found, scores
        # The history's items compete with the beam's, all ranked by the served (mixed) score.
        found = torch.cat([found, interaction[self.ITEM_SEQ]], dim=1)
        return top_distinct(found, self._first_item_scores(interaction, intents, memory).gather(1, found), k)

    @torch.no_grad()
    def generate_sessions(
        self, interaction, beam_size: int | None = None, use_kv_cache: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The ``beam_size`` most likely sessions of ``session_length`` items for each request: a beam over items,
        each item a trie-constrained beam over its codes, the decoder stepping from its key/value cache
        (``use_kv_cache=False``: every step decodes each path's whole session again, the memory's keys and values
        included; the same beams, at the cost the cache saves).

        Returns:
            ``sessions`` ``[B, beam, m]`` internal item ids (0 on a path that found no item) and their
            log-probabilities ``[B, beam]`` (the sum of each item's constrained log-probability), best first.
        """
        beam = beam_size or self.beam_size
        memory, visible = self.encode(interaction)
        batch = len(memory)
        trie, _ = self.semantic_ids_on(memory.device)
        cache = self.decoder.start(memory, visible) if use_kv_cache else None
        tokens = self.bos_token.expand(batch, 1, -1)  # [B * paths, 1, D]: what each path decodes next
        sessions = visible.new_zeros(batch, 1, 0, dtype=torch.long)  # [B, paths, items so far]
        scores = memory.new_zeros(batch, 1)
        for _ in range(self.session_length):
            paths = sessions.shape[1]
            if cache is not None:
                states, cache = self.decoder.extend(cache, tokens)
            else:
                rows = torch.arange(batch, device=memory.device).repeat_interleave(paths)
                states = self.decoder(self.decoder_tokens(sessions.flatten(0, 1)), memory[rows], visible[rows])[:, -1:]
            intents = self._intents_of(states)  # [B * paths, 1, D]
            _, item_scores, items = constrained_beam_search(self._code_logits(intents), trie, len(intents), beam)
            candidates = (scores.unsqueeze(-1) + item_scores.view(batch, paths, beam)).flatten(1)  # [B, paths x beam]
            scores, flat = candidates.topk(min(beam, candidates.shape[1]), dim=1)
            parent = flat // beam
            chosen = (items.view(batch, -1) + 1).gather(1, flat)  # [B, paths']
            earlier = sessions.gather(1, parent.unsqueeze(-1).expand(-1, -1, sessions.shape[-1]))
            sessions = torch.cat([earlier, chosen.unsqueeze(-1)], dim=-1)
            if cache is not None:
                cache = cache.select((torch.arange(batch, device=flat.device).unsqueeze(1) * paths + parent).flatten())
                tokens = self.item_tokens(chosen.flatten()).unsqueeze(1)
        return sessions, scores
