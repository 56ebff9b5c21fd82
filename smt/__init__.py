"""smt: the Sparse Manifold Transform, a white-box, one-pass unsupervised representation."""
from smt.augment import GrayView
from smt.datasets import load_mnist
from smt.hierarchical import HierarchicalSMT
from smt.image import SMT
from smt.knn import ReferenceDensity, StreamingKNN, knn_accuracy
from smt.word_embedding import SMTWordEmbedding

__version__ = "0.1.0"
__all__ = ["SMT", "GrayView", "HierarchicalSMT", "SMTWordEmbedding", "ReferenceDensity", "StreamingKNN", "knn_accuracy", "load_mnist"]
