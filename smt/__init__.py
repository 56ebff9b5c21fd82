"""smt: the Sparse Manifold Transform, a white-box, one-pass unsupervised representation."""
from smt.image import SMT

__version__ = "0.1.0"
__all__ = ["SMT"]
