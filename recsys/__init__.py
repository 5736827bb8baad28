"""Offline side of the recommender framework: data, features, models, training, export."""

__version__ = "0.1.0"
