"""This package's sequential models, one per file named after the class in lower case (RecBole's rule)."""

from recbole_oneranker.model.sequential_recommender.gpr import GPR
from recbole_oneranker.model.sequential_recommender.hstu import HSTU
from recbole_oneranker.model.sequential_recommender.oneranker import OneRanker
from recbole_oneranker.model.sequential_recommender.onerec import OneRec
from recbole_oneranker.model.sequential_recommender.rewardmodel import RewardModel

__all__ = ["GPR", "HSTU", "OneRanker", "OneRec", "RewardModel"]
