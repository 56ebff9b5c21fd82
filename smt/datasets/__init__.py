"""Data set loaders.

Each loader finds its files under ``root``, else ``$SMT_DATA``, else
``~/.cache/smt`` (one sub-folder per data set: ``mnist/``, ``cifar10/``,
``cifar100/``), checks them against the official MD5s and, with
``download=True``, downloads missing ones from the official sources. See
:mod:`smt.datasets._base`.
"""

from .cifar import load_cifar10, load_cifar100
from .mnist import load_mnist
from .wikitext import clean_wikitext_line, load_wikitext
from .word_similarity import evaluate_similarity, load_men, load_rw, load_simlex999, load_wordsim353

__all__ = ["load_mnist", "load_cifar10", "load_cifar100", "load_wikitext", "clean_wikitext_line",
           "load_wordsim353", "load_simlex999", "load_men", "load_rw", "evaluate_similarity"]
