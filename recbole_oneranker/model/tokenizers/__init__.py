"""Item tokenizers in pure PyTorch: k-means centroids (OneRanker's Fake Item Tokens), ..."""

from recbole_oneranker.model.tokenizers.kmeans import kmeans

__all__ = ["kmeans"]
