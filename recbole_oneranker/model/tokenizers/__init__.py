"""Item tokenizers in pure PyTorch and scikit-learn (no RecBole imports): k-means centroids (OneRanker's Fake Item
Tokens) and the semantic-ID quantisers RQ-KMeans, balanced residual k-means (OneRec), RQ-KMeans+ (GPR) and RQ-VAE
(TIGER), with TIGER's disambiguation code and quality metrics."""

from .kmeans import kmeans
from .residual_kmeans import (
    ResidualCodes,
    balanced_assignment,
    balanced_kmeans,
    balanced_rq_kmeans,
    nearest_codes,
    rq_kmeans,
)
from .rq_vae import (
    ResidualQuantizedAutoencoder,
    RQVAEConfig,
    RQVAEOutput,
    TrainedAutoencoder,
    rq_kmeans_plus,
    rq_kmeans_plus_init,
    rq_vae,
    train_autoencoder,
)
from .semantic_ids import (
    METHODS,
    SemanticIds,
    TokenizerConfig,
    code_metrics,
    disambiguation_codes,
    fit_semantic_ids,
)

__all__ = [
    "METHODS",
    "RQVAEConfig",
    "RQVAEOutput",
    "ResidualCodes",
    "ResidualQuantizedAutoencoder",
    "SemanticIds",
    "TokenizerConfig",
    "TrainedAutoencoder",
    "balanced_assignment",
    "balanced_kmeans",
    "balanced_rq_kmeans",
    "code_metrics",
    "disambiguation_codes",
    "fit_semantic_ids",
    "kmeans",
    "nearest_codes",
    "rq_kmeans",
    "rq_kmeans_plus",
    "rq_kmeans_plus_init",
    "rq_vae",
    "train_autoencoder",
]
