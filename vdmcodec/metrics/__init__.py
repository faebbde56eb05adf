"""Sample-quality metrics: the Fréchet distance between Gaussian fits of features, and the
small MNIST classifier whose penultimate features it is computed on here."""
from .classifier import (ClassifierConfig, MNISTClassifier, accuracy, extract_features, load_or_train,
                         read_idx_labels, to_input, train_classifier)
from .frechet import GaussianStats, frechet_distance, gaussian_stats

__all__ = ["ClassifierConfig", "MNISTClassifier", "accuracy", "extract_features", "load_or_train",
           "read_idx_labels", "to_input", "train_classifier", "GaussianStats", "frechet_distance", "gaussian_stats"]
