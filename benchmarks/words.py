"""SMT word embeddings next to word2vec and PPMI-SVD, trained on the same tokens in one run.

    python benchmarks/words.py [--data DIR] [--corpus auto|wikitext-103|wikitext-2|wikitext-2-valid-test]
                               [--dim 300] [--min-count 5] [--window 5] [--max-vocab 50000]
    python benchmarks/words.py --synthetic-tokens 103000000   # memory of one SMT pass at WikiText-103 size

Prints Spearman's rho (and coverage) on WordSim-353, SimLex-999, MEN and RW, with the time and
peak memory of each method. ``auto`` trains on the largest WikiText present: 103 train, else 2
train, else 2 valid + test. All methods see the same cleaned token lines (spec 8.1) and the same
window and min count; word2vec (gensim, skip-gram) needs the ``words`` extra.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import StageMeter  # noqa: E402

from smt.cooccurrence import WindowCooccurrence  # noqa: E402
from smt.datasets import (clean_wikitext_line, evaluate_similarity, load_men, load_rw,  # noqa: E402
                          load_simlex999, load_wikitext, load_wordsim353)
from smt.datasets._base import data_home  # noqa: E402
from smt.word_embedding import SMTWordEmbedding  # noqa: E402

BENCHMARKS = {"WS353": load_wordsim353, "SimLex": load_simlex999, "MEN": load_men, "RW": load_rw}


class Corpus:
    """Re-iterable cleaned token lines of WikiText splits (word2vec reads them several times)."""

    def __init__(self, name, splits, root):
        self.name, self.splits, self.root = name, splits, root

    def __iter__(self):
        for split in self.splits:
            for tokens in map(clean_wikitext_line, load_wikitext(self.name, split, root=self.root)):
                if tokens:
                    yield tokens

    def __str__(self):
        return f"{self.name} {'+'.join(self.splits)}"


def pick_corpus(choice, root):
    def present(name, split):
        try:
            return (data_home(root, name) / f"wiki.{split}.tokens").is_file()
        except Exception:
            return False
    options = {"wikitext-103": ("wikitext-103", ["train"]), "wikitext-2": ("wikitext-2", ["train"]),
               "wikitext-2-valid-test": ("wikitext-2", ["valid", "test"])}
    if choice == "auto":
        choice = next((c for c, (n, s) in options.items() if all(present(n, x) for x in s)), None)
        if choice is None:
            sys.exit(f"no WikiText split found under {root or '$SMT_DATA'}")
    return Corpus(*options[choice], root)


class Vectors:
    """Unit-norm vectors of a vocabulary, with the ``similarity`` that evaluate_similarity calls."""

    def __init__(self, words, vectors):
        self.index = {w: i for i, w in enumerate(words)}
        self.vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def similarity(self, a, b):
        return float(self.vectors[self.index[a]] @ self.vectors[self.index[b]])


def ppmi_svd(corpus, words, dim, window, cds=0.75):
    """PPMI of the window co-occurrences, factored by truncated SVD (Levy, Goldberg & Dagan 2015:
    context-distribution smoothing 0.75, vectors U sqrt(S))."""
    stats = WindowCooccurrence(window)
    for tokens in corpus:
        stats.add(tokens)
    words, _, upper = stats.restrict(words)
    c = (upper + upper.T).tocoo()
    rows = np.asarray(c.sum(axis=1)).ravel()
    context = rows ** cds
    pmi = np.log(c.data * context.sum() / (rows[c.row] * context[c.col]))
    keep = pmi > 0
    ppmi = scipy.sparse.csr_array((pmi[keep], (c.row[keep], c.col[keep])), shape=c.shape)
    u, s, _ = scipy.sparse.linalg.svds(ppmi, k=dim, random_state=0)
    return Vectors(words, u * np.sqrt(s))


def word2vec(corpus, dim, window, min_count, max_vocab, workers):
    from gensim.models import Word2Vec
    model = Word2Vec(corpus, vector_size=dim, window=window, min_count=min_count, max_final_vocab=max_vocab,
                     sg=1, workers=workers, seed=0)
    return Vectors(model.wv.index_to_key, model.wv.vectors)


def zipf_lines(n_tokens, n_types=267_735, line_length=89, seed=0):
    """Lines of independent Zipf(1) draws over ``n_types`` words: more distinct co-occurring pairs than
    real text of the same size (no collocations), so a pessimistic stand-in for memory."""
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, n_types + 1)
    cdf = np.cumsum(p / p.sum())
    words = np.array([f"w{i}" for i in range(n_types)], dtype=object)
    for start in range(0, n_tokens, line_length):
        yield words[np.searchsorted(cdf, rng.random(min(line_length, n_tokens - start)))].tolist()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data root (default: $SMT_DATA)")
    ap.add_argument("--corpus", default="auto", choices=["auto", "wikitext-103", "wikitext-2", "wikitext-2-valid-test"])
    ap.add_argument("--dim", type=int, default=300)
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--max-vocab", type=int, default=50000)
    ap.add_argument("--methods", default="smt,word2vec,ppmi-svd")
    ap.add_argument("--workers", type=int, default=2, help="word2vec threads")
    ap.add_argument("--synthetic-tokens", type=int, default=None,
                    help="only fit SMT on this many Zipf tokens and report its time and memory")
    ap.add_argument("--json", default=None, help="append the results as one JSON line to this file")
    args = ap.parse_args(argv)
    meter = StageMeter()
    smt = SMTWordEmbedding(n_components=args.dim, max_vocab=args.max_vocab, min_count=args.min_count,
                           window=args.window, random_state=0, verbose=sys.stderr.isatty())
    if args.synthetic_tokens:
        with meter.stage("SMT fit (Zipf corpus)"):
            smt.fit(zipf_lines(args.synthetic_tokens))
        print(f"synthetic Zipf corpus: {smt.n_tokens_} tokens, {len(smt.vocabulary_)} words embedded, "
              f"fit {smt.fit_stats_}")
        print(meter.table())
        return {"rows": meter.rows}

    corpus = pick_corpus(args.corpus, args.data)
    pairs = {name: load(args.data) for name, load in BENCHMARKS.items()}
    results = {}
    methods = args.methods.split(",")
    if "smt" in methods:
        with meter.stage("SMT"):
            smt.fit(corpus)
        results["SMT"] = smt
    if "word2vec" in methods:
        with meter.stage("word2vec (skip-gram)"):
            results["word2vec"] = word2vec(corpus, args.dim, args.window, args.min_count, args.max_vocab,
                                           args.workers)
    if "ppmi-svd" in methods:
        words = smt.vocabulary_ if "smt" in methods else None
        if words is None:
            sys.exit("ppmi-svd uses SMT's vocabulary: include smt in --methods")
        with meter.stage("PPMI-SVD"):
            results["PPMI-SVD"] = ppmi_svd(corpus, words, args.dim, args.window)

    print(f"corpus: {corpus} ({smt.n_tokens_ if 'smt' in methods else '?'} tokens), dim {args.dim}, "
          f"window {args.window}, min count {args.min_count}, max vocab {args.max_vocab}; "
          f"{platform.node()}, {platform.processor() or platform.machine()}")
    if "smt" in methods:
        print(f"SMT: {len(smt.vocabulary_)} words embedded ({smt.n_dropped_words_} disconnected dropped), "
              f"count {smt.fit_stats_['count_seconds']:.1f} s, solve {smt.fit_stats_['solve_seconds']:.1f} s")
    header = "| method | " + " | ".join(f"{b} rho (cov)" for b in BENCHMARKS) + " | seconds | peak GiB |"
    print(header)
    print("|" + "---|" * (len(BENCHMARKS) + 3))
    table = {}
    for (name, model), stage in zip(results.items(), meter.rows):
        scores = {b: evaluate_similarity(model.similarity, *pairs[b]) for b in BENCHMARKS}
        table[name] = {**scores, "seconds": stage[1], "peak_gib": stage[2]}
        cells = " | ".join(f"{s['spearman']:.3f} ({100 * s['coverage']:.0f}%)" for s in scores.values())
        print(f"| {name} | {cells} | {stage[1]:.1f} | {stage[2]:.2f} |")
    if "smt" in methods:
        for probe in ["king", "city", "music", "war", "three"]:
            if probe in smt._index:
                print(f"  {probe}: " + ", ".join(w for w, _ in smt.most_similar(probe, 8)))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv[1:] if argv is None
                                else argv, "corpus": str(corpus), "results": table}) + "\n")
    return table


if __name__ == "__main__":
    main()
