"""OneRanker
################################################

Reference:
    Dekai Sun et al. "OneRanker: Unified Generation and Ranking with One Model in Industrial Advertising
    Recommendation." arXiv 2603.02999, 2026.

No official code is public; ``docs/oneranker.md`` lists every design choice made where the paper is silent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbole_oneranker.data import items_held
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.abstract_recommender import (
    GenerativeRecommender,
    check_user_token_fields,
    hsd_options,
    item_feature_embedding,
)
from recbole_oneranker.model.layers import (
    CandidateHistoryConfig,
    CandidateHistoryFeatures,
    QueryDecoderConfig,
    RankingDecoder,
    RankingDecoderConfig,
    RepeatExplore,
    RepeatExploreConfig,
    RepeatExploreLogProbs,
    SIDGenerator,
    SIDGeneratorConfig,
    TaskTokenConfig,
    TaskTokenDecoder,
    UnknownItems,
    UnknownItemsConfig,
    lookup,
    seen_before,
    visible_states,
)
from recbole_oneranker.model.serving import ServingResult

VALUE_TASK = "value"
IMPLICIT_TASK = "interaction"


def ranked_stages(cascade_fields: Sequence[str]) -> list[str]:
    """Stages the ranker predicts, in cascade order (chained probabilities multiply along it); ``interaction``
    alone for data without a cascade."""
    return list(cascade_fields) or [IMPLICIT_TASK]


def task_names(cascade_fields: Sequence[str], value_field: str | None) -> list[str]:
    """The step-2 tasks of a dataset in their default order: the cascade's stages from interest to value, then
    ``value`` when the data has a value field.

    >>> task_names(["click", "conversion"], "price")
    ['click', 'conversion', 'value']
    """
    return ranked_stages(cascade_fields) + ([VALUE_TASK] if value_field else [])


def resolve_task_order(task_order: Sequence[str] | None, tasks: Sequence[str]) -> list[str]:
    """``task_order`` if given (it must be a permutation of ``tasks``), else ``tasks``."""
    if task_order is None:
        return list(tasks)
    if sorted(task_order) != sorted(tasks):
        raise ConfigError(f"task_order {list(task_order)} must be a permutation of this dataset's tasks {list(tasks)}")
    return list(task_order)


def top_candidates(retrieval: Tensor, num_candidates: int) -> Tensor:
    """``[P, N]`` the ``num_candidates`` items of highest ``retrieval`` score (``[P, n_items]``), padding excluded."""
    retrieval = retrieval.detach().clone()
    retrieval[:, 0] = float("-inf")
    return retrieval.topk(num_candidates, dim=1).indices


def force_targets(candidates: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``candidates`` (``[P, N]``) with each target (``[P]``) forced in, and whether it was there already, ``[P]``.

    A missed target replaces the last candidate (candidates carry no position, so where it sits tells the ranker
    nothing).

    >>> candidates, retrieved = force_targets(torch.tensor([[4, 2], [3, 1]]), torch.tensor([2, 5]))
    >>> candidates.tolist(), retrieved.tolist()
    ([[4, 2], [3, 5]], [True, False])
    """
    retrieved = (candidates == targets.unsqueeze(1)).any(dim=1)
    candidates = candidates.clone()
    candidates[~retrieved, -1] = targets[~retrieved]
    return candidates, retrieved


class RankerHistory(NamedTuple):
    """The history the ranker's cross features read (``candidate_history_features``).

    Attributes:
        items: ``[B, M]`` history item ids, 0 = padding.
        levels: ``[B, M]`` their feedback levels, 0 = padding.
    """

    items: Tensor
    levels: Tensor


@dataclass
class DecoderInputs:
    """What steps 2 and 3 read at the ``R`` decoding positions of each of ``B`` rows in training.

    Attributes:
        memory: ``[B, N, D]`` step-1 states the decoders attend to (detached unless ``decoders_train_backbone``).
        positions: ``[B, R]`` decoding positions (each row's last, then uniform draws before it).
        seq_lens: ``[B]`` history lengths.
        tokens: ``[B, R, T + F, D]`` step-2 outputs, or None without step 2.
        flat_tokens: ``[BR, T + F, D]`` the same, one row per position (one view shared by every reader, so their
            gradients meet in one place and sum in the same order on every run).
        flat_states: ``[BR, D]`` step-1 states at the positions (not detached: the generator's users).
        targets: ``[BR]`` the next item after each position.
        flat_intents: ``[BR, H, D]`` the SID heads' intents at the positions (``generation: sid``), else None.
        copy: the repeat-explore mixture's parts at the positions (``repeat_explore``), else None.
        history: the history the ranker's cross features read (``candidate_history_features``), else None.
    """

    memory: Tensor
    positions: Tensor
    seq_lens: Tensor
    tokens: Tensor | None
    flat_tokens: Tensor | None
    flat_states: Tensor
    targets: Tensor
    flat_intents: Tensor | None = None
    copy: RepeatExploreLogProbs | None = None
    history: RankerHistory | None = None


@dataclass
class TrainingCandidates:
    """The ranker's training sets at the decoding positions.

    Attributes:
        retrieval: ``[BR, n_items]`` retrieval logits (with the repeat shift of each position's seen items).
        candidates: ``[BR, N]`` top retrieved items, the target forced in.
        retrieved: ``[BR]`` whether retrieval found the target itself.
    """

    retrieval: Tensor
    candidates: Tensor
    retrieved: Tensor


class OneRanker(GenerativeRecommender):
    r"""OneRanker: generation and ranking in one model, in three steps over one HSTU pass.

    1. **G-decoder** (step 1, :class:`~recbole_oneranker.model.layers.SequenceEncoder`): the HSTU stack over the
       history; each token is an item plus its feedback level (how far along the cascade the interaction went).
       Generation heads score the next item over the catalogue at every position; with ``n_gen_heads > 1`` they
       form a mixture of softmaxes (several interest paths). With ``generation: sid`` (the paper's step 1, GPR's),
       step 1 generates semantic-ID paths instead: each token also carries its item's code embeddings, and GPR's
       thinking tokens and ``mtp_heads`` heads (:class:`~recbole_oneranker.model.layers.SIDGenerator`, head ``j``
       learning the ``j``-th next item) give every item its exact SID log-probability, mixed over the heads.
    2. **Task and Fake Item Tokens** (step 2, :class:`~recbole_oneranker.model.layers.TaskTokenDecoder`): one task
       token per task of ``task_order`` (the cascade, interest to value, plus a value task when the data has a
       value), causal among themselves, and ``n_fake_items`` Fake Item Tokens = k-means centroids of the
       (normalised) item embeddings, recomputed every ``fake_refresh_epochs`` epochs, never learned. Each task token
       retrieves items through two channels (its own vector, and its preference over the fake tokens applied to the
       item's cosine similarities to the centroids). Task t is trained on the positions whose next interaction
       reached stage t (the value task weights every position by its value).
    3. **R-decoder** (step 3, :class:`~recbole_oneranker.model.layers.RankingDecoder`): a ranking token and the top
       ``num_candidates`` retrieved items (the target forced in during training) decode against the step-1 states
       and step-2 tokens already computed (the pass-through: no second HSTU pass). Per-task heads give chained stage
       probabilities, times a predicted value: an eCPM-like score, trained by per-task BCE and a value-weighted
       pairwise loss.

    Loss: ``alpha * (L_gen + L_task) + beta * L_rank + gamma * L_DC``, where ``L_DC`` = KL(ranker || generator) over
    each candidate set, the ranker's distribution detached (the ranker teaches the generator).

    :meth:`serve` ranks the top ``num_candidates`` retrieved items by the ranker, above the rest in retrieval order.
    Every ablation of the paper's Tables 2-3 is a switch (``properties/model/OneRanker.yaml``).

    NOTE (choices where the paper is silent, detailed in docs/oneranker.md): the retrieval score used for
    candidates and for DC is the step-1 generation logit plus the last task token's score; steps 2 and 3 run at
    ``decoder_positions`` positions per sequence in training (always including the last), at the last at inference.
    With ``generation: sid`` the candidates are the top items by exact SID log-probability (what a trie beam of
    unbounded width returns) rather than a beam's, and the Fake Item Tokens stay centroids of the item vectors (the
    id table's rows, or without item-id embeddings the items' code embeddings' sums).

    Added, off by default (``repeat_explore``; not in the paper, as GPR's and OneRec's): step 1's distribution mixed
    with a copy attention over the history's items (RepeatNet), the same layer GPR-repeat uses, so that OneRanker
    and GPR can be compared with the same means of scoring a seen item; the retrieval logit is then the mixture's
    log-probability. Step 1 trains on the mixture's likelihood where its distribution is exact (SID generation, or
    item generation with ``loss_type: full_softmax``); with a sampled softmax the item generator keeps its own loss
    and the gate and copy attention fit the mixture on the generator's full distribution, without gradient into it.
    With ``candidate_history_features`` (not in the paper's text, which names candidate-level features without
    listing them) each candidate's R-decoder token also reads what the user did with that item up to the position
    (:class:`~recbole_oneranker.model.layers.CandidateHistoryFeatures`: count, recency, deepest feedback level).
    With ``candidate_id_dropout > 0`` a candidate no training row holds enters the R-decoder as one learned
    unknown-item vector instead of its untrained id embedding, and that share of the other training candidates
    does too, so that the vector is learned (id dropout for cold items).
    """

    LEGACY_KEYS = (
        ("item_embedding.", "encoder.item_embedding."),
        ("position_embedding.", "encoder.position_embedding."),
        ("stack.", "encoder.stack."),
        ("repeat_shift", "repeat_shift.shift"),
        ("task_tokens", "task_decoder.task_tokens"),
        ("fake_type", "task_decoder.fake_type"),
        ("fake_centroids", "task_decoder.fake_centroids"),
        ("step2.", "task_decoder.decoder."),
        ("rank_token", "ranker.rank_token"),
        ("ranker.", "ranker.decoder."),
        ("task_heads.", "ranker.stage_heads."),
        ("value_head.", "ranker.value_head."),
    )
    RENAMED_KEYS = (("unknown_candidate", "unknown_candidates.vector"),)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.tasks = resolve_task_order(config["task_order"], task_names(self.cascade_fields, self.value_field))
        self.n_gen_heads = config["n_gen_heads"]
        self.n_fake_items = config["n_fake_items"]
        self.fake_refresh_epochs = config["fake_refresh_epochs"]
        self.num_candidates = config["num_candidates"]
        self.decoder_positions = config["decoder_positions"]
        self.alpha, self.beta, self.gamma = config["alpha"], config["beta"], config["gamma"]
        self.dc_temperature = config["dc_temperature"]
        self.use_step2 = config["use_step2"]
        self.use_ranker = config["use_ranker"]
        self.inject_step2_kv = config["inject_step2_kv"] and self.use_step2
        self.ranker_residual = config["ranker_residual"]
        self.rank_forced_targets = config["rank_forced_targets"]
        self.decoders_train_backbone = config["decoders_train_backbone"]
        self.user_token_fields = check_user_token_fields(config, dataset)
        self.generation = config["generation"]
        self.item_id_embeddings = self.embeds_item_ids(config)
        if self.generation == "sid" and self.n_gen_heads > 1:
            raise ConfigError("n_gen_heads mixes item-id heads: with generation: sid, step 1's heads are mtp_heads")
        if not config["item_id_embeddings"] and self.generation != "sid":
            raise ConfigError("item_id_embeddings: False makes the items their semantic IDs: it needs generation: sid")
        if not self.item_id_embeddings and config["candidate_id_dropout"]:
            raise ConfigError(
                "candidate_id_dropout replaces the candidates' id embeddings: with item_id_embeddings: False there "
                "are none; set it to 0"
            )
        if self.gamma and not self.use_ranker:
            raise ConfigError("gamma (the DC loss) needs the ranker as its teacher: set use_ranker: True or gamma: 0")
        if self.use_ranker and self.num_candidates < 2:
            raise ConfigError(f"num_candidates must be at least 2, got {self.num_candidates}")

        # define layers and loss
        d = self.hidden_size
        self.encoder = self.item_sequence_encoder(
            config, dataset, len(self.user_token_fields), item_table=self.item_id_embeddings, **hsd_options(config)
        )
        self.level_embedding = nn.Embedding(len(self.cascade_fields) + 2, d, padding_idx=0)  # 0 = padding
        self.user_token_embeddings = nn.ModuleDict(
            {field: nn.Embedding(dataset.num(field), d, padding_idx=0) for field in self.user_token_fields}
        )
        self.gen_projection = nn.Linear(d, d * self.n_gen_heads) if self.n_gen_heads > 1 else None
        decoder = {"hidden_size": d, "num_heads": config["decoder_heads"], "dropout": self.dropout_prob}
        if self.use_step2:
            self.task_decoder = TaskTokenDecoder(
                TaskTokenConfig(
                    QueryDecoderConfig(
                        **decoder,
                        num_layers=config["task_decoder_layers"],
                        cross_attention_first=config["cross_attention_first"],
                    ),
                    num_tasks=len(self.tasks) if config["task_decoupling"] else 1,
                    num_fake_items=self.n_fake_items,
                    heterogeneous_mask=config["heterogeneous_mask"],
                )
            )
            # Weight of the task channel in the retrieval score when a ranker follows; from 0, so step 2 joins the
            # generator's order only as far as the DC loss asks for it (see _retrieval_logits).
            self.task_gate = nn.Parameter(torch.zeros(()))
        if self.use_ranker:
            self.ranker = RankingDecoder(
                RankingDecoderConfig(
                    QueryDecoderConfig(**decoder, num_layers=config["rank_decoder_layers"]),
                    num_stages=len(ranked_stages(self.cascade_fields)),
                    predicts_value=bool(self.value_field),
                )
            )
            # Weight of the ranker's correction over the retrieval logit (ranker_residual): it starts at 0, so the
            # candidates start in the generator's order and the ranker earns its say through the pairwise loss.
            self.rank_gate = nn.Parameter(torch.zeros(()))
            # The candidates' side features, through the ranker's own tables: what the ranker can know of an item
            # beyond the id the generator retrieved it by (docs/oneranker.md, "Candidate features").
            features = item_feature_embedding(config, dataset) if config["candidate_item_features"] else None
            self.candidate_features = features
        # Step 1 generating semantic IDs (generation: sid): GPR's thinking tokens and MTP heads over the same trunk,
        # each history token and candidate also reading its items' code embeddings. Built last, so that item
        # generation draws the weights it drew before this mode existed.
        self.generator: SIDGenerator | None = None
        if self.generation == "sid":
            self.mtp_heads = config["mtp_heads"]
            codebook_sizes = self.load_semantic_ids(config, dataset)
            self.code_inputs = nn.ModuleList(nn.Embedding(size, d) for size in codebook_sizes)
            self.generator = SIDGenerator(
                SIDGeneratorConfig(
                    hidden_size=d,
                    codebook_sizes=codebook_sizes,
                    num_heads=self.mtp_heads,
                    num_thinking_tokens=config["num_thinking_tokens"],
                    attention_heads=config["decoder_heads"],
                    dropout=self.dropout_prob,
                    scoring=config["sid_scoring"],
                )
            )
        self.repeat_explore = RepeatExplore(RepeatExploreConfig(d)) if config["repeat_explore"] else None
        # What the user did with each candidate before (count, recency, deepest level). Built after the modules
        # above, so that they draw the weights they draw without it (the tables re-drawn below do not).
        self.candidate_history: CandidateHistoryFeatures | None = None
        if self.use_ranker and config["candidate_history_features"]:
            sizes = CandidateHistoryConfig(hidden_size=d, num_levels=self.level_embedding.num_embeddings)
            self.candidate_history = CandidateHistoryFeatures(sizes)
        # One learned vector for the candidates whose id embedding the training never shaped (candidate_id_dropout).
        self.unknown_candidates: UnknownItems | None = None
        if self.use_ranker and config["candidate_id_dropout"]:
            sizes = UnknownItemsConfig(hidden_size=d, dropout=config["candidate_id_dropout"])
            self.unknown_candidates = UnknownItems(sizes, items_held(dataset))

        # parameters initialization (the encoder initialised the backbone) and first Fake Item Tokens
        code_inputs = list(self.code_inputs) if self.generator is not None else []
        for embedding in (self.level_embedding, *self.user_token_embeddings.values(), *code_inputs):
            nn.init.normal_(embedding.weight, std=0.02)
        self.refresh_fake_items(seed=config["seed"])

    # -- Fake Item Tokens -------------------------------------------------------------------------------------

    @torch.no_grad()
    def refresh_fake_items(self, seed: int = 0) -> None:
        """Recompute the Fake Item Tokens: k-means centroids of the normalised item vectors (padding excluded)."""
        if self.use_step2 and self.n_fake_items:
            self.task_decoder.refresh_fake_items(self.item_vectors()[1:], seed=seed)

    def on_train_epoch_start(self, epoch: int) -> None:
        """Trainer hook: refresh the Fake Item Tokens every ``fake_refresh_epochs`` epochs."""
        if self.fake_refresh_epochs and epoch % self.fake_refresh_epochs == 0:
            self.refresh_fake_items(seed=epoch)

    # -- step 1: generation -----------------------------------------------------------------------------------

    def forward(
        self,
        item_seq: Tensor,
        item_seq_len: Tensor,
        timestamps: Tensor | None = None,
        token_features: Tensor | None = None,
        prefix: Tensor | None = None,
    ) -> Tensor:
        """``[B, N, D]`` step-1 states of right-padded histories (see :class:`SequenceEncoder`); without item-id
        embeddings, ``token_features`` (which then hold the items' codes) are the tokens."""
        if not self.item_id_embeddings:
            return self.encoder.encode_tokens(token_features, item_seq_len, timestamps, prefix)
        return self.encoder(item_seq, item_seq_len, timestamps, token_features, prefix)

    def embeds_item_ids(self, config) -> bool:
        return config["generation"] == "item" or config["item_id_embeddings"]

    def item_embeddings(self, item_ids: Tensor) -> Tensor:
        """``[..., D]`` each item's own embedding: its row of the id table, or without item-id embeddings its code
        embeddings' sum."""
        return self.encoder.item_embedding(item_ids) if self.item_id_embeddings else self.item_tokens(item_ids)

    def item_vectors(self, item_ids: Tensor | None = None) -> Tensor:
        if self.item_id_embeddings:
            return self.encoder.item_vectors(item_ids)
        # As the id table's: the catalogue's normalised embeddings (the padding item's 0), then its rows.
        catalogue = torch.arange(self.n_items, device=self.item_codes.device)
        table = F.normalize(self.item_embeddings(catalogue), dim=-1) * (catalogue > 0).unsqueeze(-1)
        return table if item_ids is None else lookup(table, item_ids)

    def encode(self, interaction) -> Tensor:
        seq_len = int(interaction[self.ITEM_SEQ_LEN].max())
        prefix = None
        if self.user_token_fields:
            tokens = [self.user_token_embeddings[field](interaction[field]) for field in self.user_token_fields]
            prefix = torch.stack(tokens, dim=1) * math.sqrt(self.hidden_size)  # [B, P, D]
        item_seq = interaction[self.ITEM_SEQ][:, :seq_len]
        token_features = self.level_embedding(self.feedback_levels(interaction, seq_len))
        token_features = self.with_history_features(token_features, item_seq, math.sqrt(self.hidden_size))
        if self.generator is not None:  # the items' semantic IDs: the code embeddings' sum
            token_features = token_features + self.item_tokens(item_seq) * math.sqrt(self.hidden_size)
        return self.forward(
            item_seq,
            interaction[self.ITEM_SEQ_LEN],
            self.request_timestamps(interaction, seq_len),
            token_features=token_features,
            prefix=prefix,
        )

    def trains_item_softmax(self, config) -> bool:
        """Step 1 trains the next-item softmax (and ``repeat_bias`` learns in it) only when it generates item ids;
        generating semantic IDs, the shift learns as GPR's does."""
        return config["generation"] == "item"

    def _generation_users(self, states: Tensor) -> Tensor:
        """``[..., H, D]`` normalised user vectors of the generation heads."""
        if self.gen_projection is None:
            return self.user_vectors(states).unsqueeze(-2)
        return self.user_vectors(self.gen_projection(states).unflatten(-1, (self.n_gen_heads, self.hidden_size)))

    def _generation_logits(self, users: Tensor, items: Tensor) -> Tensor:
        """Mixture-of-softmaxes logit ``log mean_h exp(<u_h, e> / t)``.

        Args:
            users: ``[P, H, D]``; items: ``[P, C, D]`` or ``[C, D]`` normalised item vectors.

        Returns:
            ``[P, C]``.
        """
        users = users / self.temperature  # scale the users, not the (catalogue-sized) logits
        per_head = (
            torch.einsum("phd,pcd->phc", users, items)
            if items.dim() == 3
            else torch.einsum("phd,cd->phc", users, items)
        )
        if self.n_gen_heads == 1:  # a mixture of one head is that head: skip the catalogue-sized logsumexp
            return per_head.squeeze(1)
        return torch.logsumexp(per_head, dim=1) - math.log(self.n_gen_heads)

    def _sid_logits(self, intents: Tensor) -> Tensor:
        """``[P, n_items]`` the SID heads' mixture ``log mean_h p_h(item)`` over the catalogue, each head's
        probability exact and normalised over the trie (as GPR serves); ``-inf`` for the padding item."""
        _, structure = self.semantic_ids_on(intents.device)
        mixture = self.generator.mixture_catalogue_log_probs(intents, structure)  # [P, n_items - 1]
        return F.pad(mixture, (1, 0), value=float("-inf"))

    # -- step 2: task and fake item tokens --------------------------------------------------------------------

    def _step2(self, memory: Tensor, positions: Tensor, seq_lens: Tensor) -> Tensor | None:
        """``[B, R, T + F, D]`` task and fake tokens at ``positions`` (``[B, R]``) of each row; None without step 2."""
        if not self.use_step2:
            return None
        return self.task_decoder(memory, visible_states(memory.shape[1], positions, seq_lens))

    def task_scores(self, tokens: Tensor, items: Tensor) -> Tensor:
        """Dual-channel retrieval logits of ``items`` for every task token.

        Args:
            tokens: ``[P, T + F, D]`` step-2 outputs; items: ``[P, C, D]`` or ``[C, D]`` normalised item vectors.

        Returns:
            ``[P, T, C]``: both channels (:meth:`TaskTokenDecoder.task_queries`) over the temperature.
        """
        return self._task_queries(tokens) @ items.transpose(-1, -2)

    def _task_queries(self, tokens: Tensor) -> Tensor:
        """``[P, T, D]`` the task queries over the temperature (scale the queries, not the catalogue-sized scores)."""
        return self.task_decoder.task_queries(tokens) / self.temperature

    # -- retrieval score, candidates and step 3 ---------------------------------------------------------------

    def _retrieval_logits(
        self, queries: Tensor, tokens: Tensor | None, items: Tensor, generation: Tensor | None = None
    ) -> Tensor:
        """Generator score used to pick candidates: step-1 logit (+ the last task token's score).

        Args:
            queries: ``[P, H, D]`` step 1's user vectors (item generation) or SID intents (``generation: sid``).
            tokens: ``[P, T + F, D]`` step-2 outputs or None.
            items: ``[C, D]`` (the catalogue) or ``[P, C, D]`` normalised item vectors (the task channel's, and
                the item heads').
            generation: ``[P, C]`` step 1's logits of those items when already computed (SID scores of chosen
                items come from the catalogue's, computed once per request); None = from ``queries``.

        Returns:
            ``[P, C]``.
        """
        if generation is not None:
            logits = generation
        elif self.generator is None:
            logits = self._generation_logits(queries, items)
        else:
            logits = self._sid_logits(queries)  # the whole catalogue
        if tokens is not None:  # the last (most value-aware) task token
            # With the ranker, its weight is a gate learned from 0 (through the DC loss and the candidates);
            # without it ("step 2 only"), step 2 retrieves at full weight.
            weight = self.task_gate if self.use_ranker else 1.0
            last_task = self._task_queries(tokens)[:, -1:]  # [P, 1, D]
            logits = logits + weight * (last_task @ items.transpose(-1, -2)).squeeze(1)
        return logits

    def _rank(
        self,
        memory: Tensor,
        positions: Tensor,
        seq_lens: Tensor,
        tokens: Tensor | None,
        candidates: Tensor,
        history: RankerHistory | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Step 3 on ``candidates`` (``[B, R, N]`` item ids) at ``positions`` (``[B, R]``). Each candidate's token is
        its item embedding (:meth:`_item_table_for_decoders`; the unknown-item vector under ``candidate_id_dropout``),
        plus its side features and,
        given the rows' ``history`` (:class:`RankerHistory`), what the user did with it up to the position.

        Returns:
            ``stage_logits`` ``[B, R, N, S]`` (one logit per cascade stage) and ``log_value`` ``[B, R, N]``.
        """
        embedded = self._item_table_for_decoders(candidates)  # [B, R, N, D]
        if self.unknown_candidates is not None:
            embedded = self.unknown_candidates(embedded, candidates)
        if self.candidate_features is not None:
            embedded = embedded + self.candidate_features(candidates)
        if history is not None:
            embedded = embedded + self.candidate_history(history.items, history.levels, positions, candidates)
        embedded = embedded * math.sqrt(self.hidden_size)
        private = tokens if self.inject_step2_kv else None  # pass-through of step 2's outputs, not recomputed
        return self.ranker(embedded, memory, visible_states(memory.shape[1], positions, seq_lens), private)

    def rank(self, inputs: DecoderInputs, candidates: Tensor) -> Tensor:
        """``[BR, N]`` the ranker's own score of ``candidates`` (``[B, R, N]``) at the decoding positions."""
        stage_logits, log_value = self._rank(
            inputs.memory, inputs.positions, inputs.seq_lens, inputs.tokens, candidates, inputs.history
        )
        return self.ranker.own_scores(stage_logits, log_value).flatten(0, 1)

    def _served_scores(self, ranker_scores: Tensor, retrieval: Tensor) -> Tensor:
        """The order step 3 serves: with ``ranker_residual``, the ranker's score weighted by a learned gate (from 0)
        and added to the candidate's retrieval logit (detached), so the ranker learns a correction of the
        generator's order rather than an order from scratch; otherwise the ranker's score alone."""
        return self.rank_gate * ranker_scores + retrieval.detach() if self.ranker_residual else ranker_scores

    def _mean_over_ranked_sets(self, rank_loss: Tensor, retrieved: Tensor) -> Tensor:
        """Mean of ``rank_loss`` (``[P]``) over the candidate sets the ranker learns from: without
        ``rank_forced_targets``, only those whose target retrieval found itself (``retrieved``, ``[P]``).

        Why: a target forced into a set it was not retrieved for is that set's outlier, the one item unlike the
        user's state that picked the others; a ranker trained on such sets learns to promote the least similar
        candidate, and at inference, where no target is forced in, that only demotes the right ones.
        """
        if self.rank_forced_targets:
            return rank_loss.mean()
        weights = retrieved.float()
        return (rank_loss * weights).sum() / weights.sum().clamp(min=1.0)

    def _ranker_history(self, interaction, seq_len: int) -> RankerHistory | None:
        """The ``[B, seq_len]`` history items and their feedback levels, for the ranker's cross features; None
        without them."""
        if self.candidate_history is None:
            return None
        items = interaction[self.ITEM_SEQ][:, :seq_len]
        return RankerHistory(items, self.feedback_levels(interaction, seq_len))

    def _item_table_for_decoders(self, item_ids: Tensor) -> Tensor:
        """Item embeddings read by the decoders (plus their code embeddings' sum with ``generation: sid``; that sum
        alone without item-id embeddings): detached without ``decoders_train_backbone``."""
        embeddings = self.item_embeddings(item_ids)
        if self.generator is not None and self.item_id_embeddings:
            embeddings = embeddings + self.item_tokens(item_ids)
        return embeddings if self.decoders_train_backbone else embeddings.detach()

    # -- training ---------------------------------------------------------------------------------------------

    def _task_weights(self, stage_labels: Tensor, value_weights: Tensor | None) -> Tensor:
        """``[P, T]`` weight of each position in each step-2 task's loss, in ``self.tasks`` order."""
        columns = []
        for task in self.tasks:
            if task == VALUE_TASK:
                columns.append(value_weights)
            elif task == IMPLICIT_TASK:
                columns.append(stage_labels[..., 0])
            else:
                columns.append(stage_labels[..., self.cascade_fields.index(task)])
        return torch.stack(columns, dim=-1)

    def calculate_loss(self, interaction):
        states, generation_loss = self.encode_with_generation_loss(interaction)
        losses = self._decoder_losses(interaction, states)
        parts = [self.alpha * generation_loss]
        if self.use_step2:
            parts.append(self.alpha * losses["task"])
        if self.use_ranker:
            parts.append(self.beta * losses["rank"])
            if self.gamma:
                parts.append(self.gamma * losses["dc"])
        return tuple(parts)

    def encode_with_generation_loss(self, interaction) -> tuple[Tensor, Tensor]:
        """The batch's one HSTU pass, by length bucket, with the step-1 loss at every position.

        Returns:
            ``[B, N, D]`` states in the batch's row order (padded to its longest history) and the mean loss (with
            ``generation: sid`` and ``repeat_bias``, plus the shift's mean loss over the rows, as GPR's).
        """
        total, count, shift_loss, bucket_states = 0.0, 0, 0.0, []
        buckets = self.length_buckets(interaction[self.ITEM_SEQ_LEN])
        for rows in buckets:
            bucket = interaction[rows]
            states = self.encode(bucket)  # [b, n, D]
            if self.generator is None:
                nll = self._item_generation_nll(bucket, states)
            else:
                nll, shift_gain = self._sid_nll(bucket, states)
                if shift_gain is not None:
                    shift_loss = shift_loss - shift_gain.sum()
            total = total + nll.sum()
            count += len(nll)
            bucket_states.append(states)
        loss = total / max(count, 1)
        if self.generator is not None and self.repeat_shift is not None:  # one term per row, at its last position
            loss = loss + shift_loss / len(interaction)
        return self.in_row_order(bucket_states, buckets), loss

    def _item_generation_nll(self, bucket, states: Tensor) -> Tensor:
        """``[P]`` the next item's softmax loss at each of the bucket's ``P`` positions that have one."""
        targets = self.next_items(bucket, states.shape[1])  # [b, n]
        valid = targets > 0
        users = self._generation_users(states[valid])  # [P, H, D]
        nll = self.softmax(
            lambda items, u=users: self._generation_logits(u, items), targets[valid], self.seen_at(bucket, valid)
        )
        if self.repeat_explore is None:
            return nll
        copy = self._copy_parts(bucket, states, *valid.nonzero(as_tuple=True))
        if self.softmax.config.loss_type == "full_softmax":  # -nll is log p: the mixture's exact likelihood
            return -copy.of_targets(targets[valid], -nll)
        # A sampled softmax has no normaliser to mix: the generator keeps its own loss, and the gate and the copy
        # attention fit the mixture on its full distribution, fixed (what serving mixes them with).
        return nll - copy.of_targets(targets[valid], self._fixed_item_log_probs(users, targets[valid]))

    @torch.no_grad()
    def _fixed_item_log_probs(self, users: Tensor, items: Tensor, chunk: int = 4096) -> Tensor:
        """``[P]`` log-probability of ``items`` (``[P]``) under step 1's softmax over the whole catalogue (padding
        excluded), without gradient; the catalogue's logits are made ``chunk`` positions at a time."""
        table = self.item_vectors()[1:]
        normalisers = torch.cat([self._generation_logits(part, table).logsumexp(1) for part in users.split(chunk)])
        return self._generation_logits(users, self.item_vectors(items).unsqueeze(1)).squeeze(1) - normalisers

    def _sid_nll(self, bucket, states: Tensor) -> tuple[Tensor, Tensor | None]:
        """``[P]`` the SID paths' loss at each position with a next item: head ``j`` generates the ``j``-th next
        item's codes (teacher-forced), heads without a ``j``-th item learn nothing, and the heads' mean is taken
        (GPR's MTP with uniform head weights). With ``repeat_bias``, also ``[b]`` what the shift adds to each
        row's target at its last position (:meth:`sid_repeat_shift_gain`, GPR's fit of the shift); else None."""
        n = states.shape[1]
        every_position = torch.arange(n, device=states.device).expand(len(states), -1)
        intents = self.generator.intents(states, visible_states(n, every_position, bucket[self.ITEM_SEQ_LEN]))
        shift_gain = None
        if self.repeat_shift is not None:
            shift_gain = self.sid_repeat_shift_gain(bucket, bucket[self.ITEM_SEQ][:, :n], intents)
        targets = self.next_items_ahead(bucket, n, self.mtp_heads)  # [b, n, H]
        valid = targets[..., 0] > 0
        head_targets = targets[valid]  # [P, H]
        log_probs = self.generator.path_log_probs(intents[valid], self.item_codes[head_targets]).sum(-1)  # [P, H]
        if self.repeat_explore is not None:  # the next item (head 1's) may also be copied from the history
            copy = self._copy_parts(bucket, states, *valid.nonzero(as_tuple=True))
            log_probs = torch.cat(
                [copy.of_targets(head_targets[:, 0], log_probs[:, 0]).unsqueeze(1), log_probs[:, 1:]], 1
            )
        return -((head_targets > 0).float() * log_probs).sum(-1) / self.mtp_heads, shift_gain

    def _copy_parts(self, interaction, states: Tensor, rows: Tensor, columns: Tensor) -> RepeatExploreLogProbs:
        """The repeat-explore mixture's parts at positions ``(rows[p], columns[p])`` of the step-1 ``states``
        (``[B, N, D]``), each copying from the history items up to itself."""
        history = interaction[self.ITEM_SEQ][:, : states.shape[1]]
        return self.repeat_explore.at_positions(states, history, rows, columns)

    def _mixed_generation(self, queries: Tensor, copy: RepeatExploreLogProbs) -> Tensor:
        """``[P, n_items]`` step 1's log-probability of every item under the repeat-explore mixture (the padding
        item ``-inf``), from user vectors or SID intents ``queries`` and the mixture's parts at the same positions."""
        if self.generator is not None:
            return copy.of_catalogue(self._sid_logits(queries))
        logits = self._generation_logits(queries, self.item_vectors())
        return copy.of_catalogue(F.pad(logits[:, 1:].log_softmax(1), (1, 0), value=float("-inf")))

    def _catalogue_generation(self, interaction, states: Tensor, seq_lens: Tensor, queries: Tensor) -> Tensor | None:
        """``[B, n_items]`` step 1's score of every item at each row's last position where only the whole catalogue
        gives it: the SID heads' log-probabilities (``generation: sid``), under the copy mixture with
        ``repeat_explore``. None for item logits alone (each item's is its own dot product)."""
        if self.repeat_explore is not None:
            rows = torch.arange(len(states), device=states.device)
            return self._mixed_generation(queries, self._copy_parts(interaction, states, rows, seq_lens - 1))
        return None if self.generator is None else self._sid_logits(queries)

    def decoder_inputs(self, interaction, states: Tensor) -> DecoderInputs:
        """Draw the training decoding positions of each row and run step 2 there (``states``: ``[B, N, D]``)."""
        seq_lens = interaction[self.ITEM_SEQ_LEN]
        targets = self.next_items(interaction, states.shape[1])  # [B, N]
        positions = self.sample_positions(seq_lens, self.decoder_positions)  # [B, R]
        rows = torch.arange(len(positions), device=states.device).unsqueeze(1)
        flat_states = states[rows, positions].flatten(0, 1)  # [BR, D]
        # The decoders' memory; detached, their losses train only them (the generator still learns from L_DC).
        memory = states if self.decoders_train_backbone else states.detach()
        # Step 2 after the gather: the order two uses of `states` enter the graph is the order their gradients sum in.
        tokens = self._step2(memory, positions, seq_lens)
        intents = copy = None
        if self.generator is not None:  # the SID heads read the (undetached) states up to each position
            intents = self.generator.intents(states, visible_states(states.shape[1], positions, seq_lens))
        if self.repeat_explore is not None:
            copy = self._copy_parts(interaction, states, rows.expand_as(positions).flatten(), positions.flatten())
        return DecoderInputs(
            memory=memory,
            positions=positions,
            seq_lens=seq_lens,
            tokens=tokens,
            flat_tokens=None if tokens is None else tokens.flatten(0, 1),
            flat_states=flat_states,
            targets=targets.gather(1, positions).flatten(),
            flat_intents=None if intents is None else intents.flatten(0, 1),
            copy=copy,
            history=self._ranker_history(interaction, states.shape[1]),
        )

    def training_candidates(self, interaction, inputs: DecoderInputs) -> TrainingCandidates:
        """The ranker's training sets at the decoding positions, as its loss builds them."""
        queries = self._generation_users(inputs.flat_states) if inputs.flat_intents is None else inputs.flat_intents
        generation = None if inputs.copy is None else self._mixed_generation(queries, inputs.copy)  # [BR, n_items]
        retrieval = self._retrieval_logits(queries, inputs.flat_tokens, self.item_vectors(), generation)
        if self.repeat_shift is not None:  # the items each position has seen, [BR, max_len] 0-padded
            seen = seen_before(interaction[self.ITEM_SEQ])  # causal, so untruncated padding changes nothing
            rows = torch.arange(len(inputs.positions), device=seen.device).unsqueeze(1)
            retrieval = self._shift_retrieval(retrieval, seen[rows, inputs.positions].flatten(0, 1))
        candidates, retrieved = force_targets(top_candidates(retrieval, self.num_candidates), inputs.targets)
        return TrainingCandidates(retrieval, candidates, retrieved)

    def _shift_retrieval(self, retrieval: Tensor, seen: Tensor, items: Tensor | None = None) -> Tensor:
        """Retrieval scores with ``repeat_bias``'s shift on the seen items: over the temperature on item logits; on
        SID log-probabilities as they are, as GPR's, without GPR's renormalisation (a constant per row, which no
        ranking or softmax over a row's candidates sees)."""
        return self.shift_seen(retrieval, seen, items, in_logits=self.generator is None)

    def _decoder_losses(self, interaction, states: Tensor) -> dict[str, Tensor]:
        """Step-2 task loss, step-3 ranking loss and the DC loss, at ``decoder_positions`` positions per row."""
        seq_len = states.shape[1]
        inputs = self.decoder_inputs(interaction, states)
        batch, ranked = inputs.positions.shape
        losses: dict[str, Tensor] = {}
        stage_labels = self.stage_labels(interaction, seq_len)  # [B, N, S]
        stage_labels = stage_labels.gather(1, inputs.positions.unsqueeze(-1).expand(-1, -1, stage_labels.shape[-1]))
        value_weights = self.normalised_values(interaction, seq_len)
        position_values = value_weights.gather(1, inputs.positions).flatten() if value_weights is not None else None

        if self.use_step2:
            weights = self._task_weights(stage_labels.flatten(0, 1), position_values)  # [BR, T]
            # One sampled-softmax per task token, all sharing the negatives; a shared token ([BR, 1]) serves all tasks.
            detach = not self.decoders_train_backbone
            flat_tokens = inputs.flat_tokens
            nll = self.softmax(
                lambda items: self.task_scores(flat_tokens, items.detach() if detach else items), inputs.targets
            )  # [BR, T or 1]
            losses["task"] = (weights * nll).sum() / (len(self.tasks) * batch * ranked)

        if self.use_ranker:
            sets = self.training_candidates(interaction, inputs)
            stage_logits, log_value = self._rank(
                inputs.memory,
                inputs.positions,
                inputs.seq_lens,
                inputs.tokens,
                sets.candidates.view(batch, ranked, -1),
                inputs.history,
            )
            stage_logits, log_value = stage_logits.flatten(0, 1), log_value.flatten(0, 1)  # [BR, N, S], [BR, N]
            is_target = sets.candidates == inputs.targets.unsqueeze(1)  # [BR, N]
            labels = is_target.unsqueeze(-1) * stage_labels.flatten(0, 1).unsqueeze(1)  # [BR, N, S]
            bce = F.binary_cross_entropy_with_logits(stage_logits, labels, reduction="none").mean(dim=(1, 2))
            candidate_retrieval = sets.retrieval.gather(1, sets.candidates)  # [BR, N]
            scores = self._served_scores(self.ranker.own_scores(stage_logits, log_value), candidate_retrieval)
            target_score = scores[is_target]  # [BR]
            pair_weight = position_values if position_values is not None else torch.ones_like(target_score)
            bpr = -(F.logsigmoid(target_score.unsqueeze(1) - scores) * ~is_target).sum(1) / (~is_target).sum(1)
            rank_loss = bce + pair_weight * bpr
            if self.ranker.value_head is not None:
                rank_loss = rank_loss + (log_value[is_target] - torch.log(position_values.clamp(min=1e-6))).pow(2)
            losses["rank"] = self._mean_over_ranked_sets(rank_loss, sets.retrieved)
            # DC: the generator's distribution over the candidates follows the ranker's served order (detached
            # teacher). With ranker_residual that order holds the generator's own logits, so DC asks the generator
            # to absorb the gated ranker score: nothing while the gate is 0, more as the ranker earns its weight.
            teacher = F.softmax(scores.detach() / self.dc_temperature, dim=1)
            student = F.log_softmax(candidate_retrieval / self.dc_temperature, dim=1)
            dc = (teacher * (torch.log(teacher.clamp(min=1e-12)) - student)).sum(1)
            losses["dc"] = dc.mean()
        return losses

    # -- inference --------------------------------------------------------------------------------------------

    def _last_position(self, interaction):
        """Steps 1-2 at each row's last position: states, lengths, positions ``[B, 1]``, generation users
        ``[B, H, D]`` and step-2 tokens ``[B, 1, Q, D]`` (or None)."""
        states = self.encode_by_length(interaction)
        seq_lens = interaction[self.ITEM_SEQ_LEN]
        positions = (seq_lens - 1).unsqueeze(1)  # [B, 1]
        if self.generator is None:
            queries = self._generation_users(self.gather_indexes(states, seq_lens - 1))  # [B, H, D]
        else:
            queries = self.generator.intents(states, visible_states(states.shape[1], positions, seq_lens))[:, 0]
        return states, seq_lens, positions, queries, self._step2(states, positions, seq_lens)

    def serve(self, interaction) -> ServingResult:
        """Retrieval over the catalogue, then (with the ranker) step 3 on the top ``num_candidates``, served above
        every other item (kept in retrieval order)."""
        states, seq_lens, positions, users, tokens = self._last_position(interaction)
        flat_tokens = tokens.flatten(0, 1) if tokens is not None else None
        generation = self._catalogue_generation(interaction, states, seq_lens, users)
        retrieval = self._retrieval_logits(users, flat_tokens, self.item_vectors(), generation)  # [B, n_items]
        retrieval = self._shift_retrieval(retrieval, interaction[self.ITEM_SEQ])
        if not self.use_ranker:
            return ServingResult(retrieval_scores=retrieval, final_scores=retrieval)
        candidates = top_candidates(retrieval, self.num_candidates)  # [B, N]
        history = self._ranker_history(interaction, states.shape[1])
        stage_logits, log_value = self._rank(states, positions, seq_lens, tokens, candidates.unsqueeze(1), history)
        ranker_scores = self.ranker.own_scores(stage_logits, log_value).squeeze(1)  # [B, N]
        candidate_scores = self._served_scores(ranker_scores, retrieval.gather(1, candidates))
        lift = retrieval.max(dim=1, keepdim=True).values - candidate_scores.min(dim=1, keepdim=True).values + 1.0
        return ServingResult(
            retrieval_scores=retrieval,
            final_scores=retrieval.scatter(1, candidates, candidate_scores + lift),
            candidates=candidates,
            ranker_scores=ranker_scores,
            candidate_scores=candidate_scores,
        )

    def predict(self, interaction):
        requests, request_of_row = self.distinct_requests(interaction)
        steps = self._last_position(requests)  # steps 1-2 once per distinct request, step 3 per row
        states, seq_lens, positions, users, tokens = (
            None if tensor is None else tensor[request_of_row] for tensor in steps
        )
        items = interaction[self.ITEM_ID]
        # Exact SID scores or the copy mixture's: the catalogue's once per request, then each row's item.
        request_states, request_lens, _, request_queries, _ = steps
        generation = self._catalogue_generation(requests, request_states, request_lens, request_queries)
        if generation is not None:
            generation = generation[request_of_row].gather(1, items.unsqueeze(1))
        flat_tokens = tokens.flatten(0, 1) if tokens is not None else None
        item_vectors = self.item_vectors(items).unsqueeze(1)
        retrieval = self._retrieval_logits(users, flat_tokens, item_vectors, generation).squeeze(1)
        retrieval = self._shift_retrieval(retrieval, interaction[self.ITEM_SEQ], items)
        if not self.use_ranker:
            return retrieval
        # Candidates never see each other, so an item's ranker score does not depend on the rest of the set.
        history = self._ranker_history(interaction, states.shape[1])  # each row's own, as its states
        stage_logits, log_value = self._rank(states, positions, seq_lens, tokens, items.view(-1, 1, 1), history)
        own = self.ranker.own_scores(stage_logits, log_value)
        return self._served_scores(own, retrieval.view(-1, 1, 1)).view(-1)
