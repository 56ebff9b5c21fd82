"""The kNN benchmark shared by ``knn_mnist.py`` and ``knn_cifar.py``: fit SMT on the training
images, embed train and test, score the paper's weighted kNN, and print the time and peak
memory of each stage."""
import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import FeatureUnion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import StageMeter  # noqa: E402

from smt import SMT, GrayView, HierarchicalSMT  # noqa: E402
from smt.hierarchical import default_second_layer  # noqa: E402
from smt._device import native_bf16, resolve_device  # noqa: E402
from smt.augment import add_gray_copies, add_mirrors  # noqa: E402
from smt.knn import ReferenceDensity, StreamingKNN  # noqa: E402
from smt.patches import CENTERINGS  # noqa: E402


# SMT parameters the benchmark sets itself, or offers under another name
_OWN = {"random_state": "--seed", "checkpoint_path": "--checkpoint", "grayscale_augmentation": "--grayscale-aug",
        "verbose": None, "patch_size": "--patch-size", "threshold": "--threshold",
        "center_patches": "--center-patches", "pool_size": "--pool-size", "pool_stride": "--pool-stride",
        "pool_sigma": "--pool-sigma", "n_atoms": "--n-atoms"}
_HELP = {
    "context": "'image' or a radius in patches",
    "precision": "of the encode GEMM (bf16: similarities in bfloat16, compared in float32; auto: bf16 where the "
                 "device multiplies bfloat16 in hardware, else float32)",
    "max_coherence": "start the dictionary from patches with pairwise cosines at most this ([A]: 0.35)",
    "keep_statistics": "keep each model's G and M after its solve (only partial_fit reads them; default here: "
                       "dropped, 1 GiB per model at K 8192)",
}


class WhitenedPCA:
    """Centre, project on the top principal directions of the training embeddings, and whiten.

    Unsupervised post-processing of the embedding before the kNN: learned from training embeddings
    only (no label), from the Gram matrix of a subsample (N images << D features: a D x D
    covariance of CIFAR's 55,296 features would not fit).

    Parameters
    ----------
    n_components : int
        Principal directions kept (P).
    """

    def __init__(self, n_components):
        self.n_components = n_components

    def fit(self, x):
        """Learn the mean, directions and standard deviations from ``x`` of shape (N, D), float32.

        ``x`` is centred in place (the caller hands over its buffer: no copy of N x D beside it).
        """
        x = torch.as_tensor(x)
        self.mean_ = x.mean(0, dtype=torch.float64).float()
        x -= self.mean_
        # The Gram matrix summed in float64 over float32 blocks of features: float32 GEMM speed,
        # float64 sums across the 55,296 features
        gram = torch.zeros(len(x), len(x), dtype=torch.float64)
        for start in range(0, x.shape[1], 4096):
            block = x[:, start:start + 4096]
            gram += (block @ block.T).double()
        evals, evecs = torch.linalg.eigh(gram)
        p = min(self.n_components, len(x) - 1)
        evals, evecs = evals.flip(0)[:p].clamp_min(1e-12), evecs.flip(1)[:, :p]
        # unit directions V^T = S^-1 U^T X, and the standard deviation along each
        self.components_ = ((evecs.T.float() @ x) / evals.sqrt().float()[:, None]).contiguous()
        self.std_ = (evals / len(x)).sqrt().float()
        return self

    def transform(self, x):
        """``x`` of shape (n, D) -> whitened coordinates of shape (n, P), float32."""
        return ((torch.as_tensor(x) - self.mean_) @ self.components_.T) / self.std_


def validation_split(n_images, n_copies, fraction=0.1):
    """Queries and references for choosing k and T without the test set: the last ``fraction`` of
    the ``n_images`` original training images against the others, leaving out the queries'
    augmented copies (copy ``j`` of image ``i`` is image ``i + j * n_images``, as ``add_mirrors``
    and ``add_gray_copies`` order them), which would be near-duplicates with the query's label."""
    n_val = max(1, int(n_images * fraction))
    is_query = np.zeros(n_images * n_copies, bool)
    is_query[n_images - n_val:n_images] = True
    held_out = np.tile(is_query[:n_images], n_copies)
    return np.flatnonzero(is_query), np.flatnonzero(~held_out)


def neighbours(queries, train, y_train, k, rows=None):
    """A :class:`StreamingKNN` of ``queries`` holding their ``k`` nearest among ``train[rows]`` (all
    rows by default), to vote with any k' <= k and any temperature."""
    rows = np.arange(len(train)) if rows is None else rows
    knn = StreamingKNN(queries, k=k, device="cpu")
    for start in range(0, len(rows), 8192):
        part = rows[start:start + 8192]
        knn.update(train[part], y_train[part])
    return knn


def choose_k_temperature(train, y_train, queries, refs, k_grid, t_grid):
    """The (k, T) of the grid with the best validation top-1 (ties: smaller k, larger T), and that top-1."""
    knn = neighbours(train[queries], train, y_train, max(k_grid), refs)
    val = {(k, t): knn.accuracy(y_train[queries], (1,), k=k, temperature=t)["top1"]
           for k, t in itertools.product(k_grid, t_grid)}
    return max(val.items(), key=lambda kv: (kv[1], -kv[0][0], kv[0][1]))


class _WhitenedStream:
    """Training embeddings as they stream past the kNN, whitened by a PCA learned on the first
    ``n_fit`` of them (held until then), kept in P dimensions."""

    def __init__(self, n_components, n_fit):
        self.pca = WhitenedPCA(n_components)
        self.n_fit = n_fit
        self.seconds = 0.0
        self._held = None
        self._n_held = 0
        self._test = None
        self._train = []

    def add(self, z, z_test):
        tic = time.perf_counter()
        z = torch.as_tensor(z)
        if self._test is None:
            if self._held is None:
                self._held = torch.empty(self.n_fit, z.shape[1])
            take = min(len(z), self.n_fit - self._n_held)
            self._held[self._n_held:self._n_held + take] = z[:take]
            self._n_held += take
            z = z[take:]
            if self._n_held == self.n_fit:
                self.pca.fit(self._held)  # centres the held rows in place
                self._train.append((self._held @ self.pca.components_.T) / self.pca.std_)
                self._held = None
                self._test = self.pca.transform(z_test)
        if self._test is not None and len(z):
            self._train.append(self.pca.transform(z))
        self.seconds += time.perf_counter() - tic

    def score(self, y_train, y_test, n_originals, args):
        """Test top-1 at the benchmark's k / T, and at the k / T chosen on a validation split."""
        train = torch.cat(self._train)
        queries, refs = validation_split(n_originals, len(train) // n_originals)
        (k, t), val = choose_k_temperature(train, np.asarray(y_train), queries, refs, args.k_grid, args.t_grid)
        knn = neighbours(self._test, train, np.asarray(y_train), max(args.k, k))
        return {"top1": knn.accuracy(y_test, (1,), k=args.k, temperature=args.temperature)["top1"],
                "k": k, "t": t, "val_top1": val,
                "top1_chosen": knn.accuracy(y_test, (1,), k=k, temperature=t)["top1"],
                "seconds_in_embed_train": self.seconds}


class _ProbeDensity:
    """Each training embedding's :class:`~smt.knn.ReferenceDensity` among the probe images
    ``probes`` (training indices), a probe's own image and its copies (``+ j * n_originals``) left
    out: times beta, :meth:`StreamingKNN.update`'s ``penalty``."""

    def __init__(self, z_probes, probes, n_originals, precision, device):
        self.density = ReferenceDensity(z_probes, k=10, precision=precision, device=device)
        self.probes = torch.as_tensor(probes)
        self.n_originals = n_originals

    def __call__(self, z, start):
        image = torch.arange(start, start + len(z)) % self.n_originals
        exclude = self.probes[:, None] == image[None, :]
        return self.density(z, exclude.to(self.density.device))


class _HubKNNs:
    """The kNNs of the hub penalties ``betas``: one of the test images per beta (sharing the
    queries), and with several betas one of the validation split per beta, from which (beta, k, T)
    is chosen: the probes as queries against the other training images and their copies.

    ``merge(z, start)`` streams one chunk of training embeddings (rows ``start ...``) into all."""

    def __init__(self, args, z_test, y_train, n_originals, z_probes, probes, val_refs, copy):
        self.betas = list(args.hub_penalty)
        self.choose = len(self.betas) > 1
        self.y_train = np.asarray(y_train)
        self.density = None if z_probes is None else _ProbeDensity(
            z_probes, probes, n_originals, args.knn_precision, args.device)
        k = max(args.k, *args.k_grid) if self.choose else args.k
        first = StreamingKNN(z_test, k=k, temperature=args.temperature, device=args.device,
                             precision=args.knn_precision, copy=copy)
        self.test = [first] + [first.sharing_queries() for _ in self.betas[1:]]
        self.val = []
        if self.choose:
            self.is_ref = np.zeros(len(y_train), bool)
            self.is_ref[val_refs] = True
            v = StreamingKNN(z_probes, k=max(args.k_grid), device=args.device, precision=args.knn_precision,
                             copy=False)
            self.val = [v] + [v.sharing_queries() for _ in self.betas[1:]]

    def merge(self, z, start):
        labels = self.y_train[start:start + len(z)]
        density = None if self.density is None else self.density(z, start)
        penalty = [None if not beta else beta * density for beta in self.betas]
        if self.val:
            rows = np.flatnonzero(self.is_ref[start:start + len(z)])
            for knn, p in zip(self.val, penalty):
                knn.update(z[rows], labels[rows], None if p is None else p[torch.as_tensor(rows, device=p.device)])
        for i, (knn, p) in enumerate(zip(self.test, penalty)):
            # a kNN that does not copy normalises its chunk in place: each such but the last gets its own
            own = knn.copy or i == len(self.test) - 1
            knn.update(z if own else torch.as_tensor(z).clone(), labels, p)

    def choice(self, y_test, probes, args):
        """Test and validation top-1 per beta at the benchmark's k / T, and (beta, k, T) chosen on
        validation (ties: smaller beta, smaller k, larger T) with its test top-1."""
        vote = {"k": args.k, "temperature": args.temperature}
        out = {"betas": self.betas, "top1": [knn.accuracy(y_test, (1,), **vote)["top1"] for knn in self.test],
               "val_top1": [knn.accuracy(self.y_train[probes], (1,), **vote)["top1"] for knn in self.val]}
        val = {(i, k, t): knn.accuracy(self.y_train[probes], (1,), k=k, temperature=t)["top1"]
               for i, knn in enumerate(self.val) for k, t in itertools.product(args.k_grid, args.t_grid)}
        (i, k, t), best = max(val.items(), key=lambda kv: (kv[1], -self.betas[kv[0][0]], -kv[0][1], kv[0][2]))
        out.update(chosen=[self.betas[i], k, t], val_chosen=best,
                   top1_chosen=self.test[i].accuracy(y_test, (1,), k=k, temperature=t)["top1"])
        return out


def _at_least(kind, low, strict=False):
    """argparse type: a ``kind`` (int or float) at least ``low`` (above it when ``strict``)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{value} is not {'above' if strict else 'at least'} {low}")
        return value
    return parse


def _sigma(text):
    """argparse type of ``--pool-sigma``: a width above 0, or none (the box)."""
    return None if text.lower() == "none" else _at_least(float, 0, strict=True)(text)


def _value(text):
    """A command-line value for a parameter whose default gives no type (None, or int | str), or
    for ``--second-layer NAME=VALUE`` (also true / false)."""
    if text.lower() == "none":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _smt_options(ap):
    """One option per ``SMT`` parameter, typed and defaulted from ``SMT().get_params()``: a new
    parameter of the estimator appears here by itself."""
    for name, default in sorted(SMT().get_params().items()):
        if name in _OWN:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=_HELP.get(name))
        elif isinstance(default, (int, float)):
            ap.add_argument(flag, type=type(default), default=default, help=_HELP.get(name))
        else:
            ap.add_argument(flag, type=_value, default=default, help=_HELP.get(name))


def member_settings(args):
    """The (patch size, threshold) of each member the options ask for.

    Neither ``--patch-size`` nor ``--threshold`` given: the data set's default members. Either
    given: they replace the defaults, the other option taking the first default member's value;
    one value of an option is shared by every member.
    """
    return [(p, t) for p, t, _ in _member_views(args)]


def _member_views(args):
    """(patch size, threshold, view) of each member: :func:`member_settings` and ``--view``, one
    value of which is shared by every member."""
    if not _members_named(args):
        pairs = [tuple(m) for m in args.default_members]
    else:
        pairs = _broadcast("--patch-size", args.patch_size or [args.default_members[0][0]],
                           "--threshold", args.threshold or [args.default_members[0][1]])
    views = args.view or ["color"]
    return [(p, t, v) for (p, t), v in _broadcast("members by --patch-size and --threshold", pairs, "--view", views)]


def _members_named(args):
    """Whether ``--patch-size`` or ``--threshold`` replaces the data set's default members."""
    return args.patch_size is not None or args.threshold is not None


def _broadcast(name_a, a, name_b, b):
    """``a`` and ``b`` zipped, a single value of either repeated to the other's length."""
    n = max(len(a), len(b))
    if {len(a), len(b)} - {1, n}:
        raise SystemExit(f"{name_a} ({len(a)} values) and {name_b} ({len(b)}) "
                         "must have one value or the same number of values")
    return list(zip(a * (n if len(a) == 1 else 1), b * (n if len(b) == 1 else 1)))


def member_pools(args):
    """Each member's (pool size, pool stride).

    Neither ``--pool-size`` nor ``--pool-stride`` given: the data set's default members keep their
    own pooling, and members named by ``--patch-size`` / ``--threshold`` take the paper's (``SMT``'s
    4/2), so that a command written for one member size reads the same whatever the defaults.
    Either given: the other option takes the paper's value, and one value is shared by every member.
    """
    members = _member_views(args)
    paper = (SMT().pool_size, SMT().pool_stride)
    if args.pool_size is None and args.pool_stride is None:
        pools = [paper] if _members_named(args) else args.default_pools
    else:
        pools = _broadcast("--pool-size", args.pool_size or [paper[0]], "--pool-stride", args.pool_stride or [paper[1]])
    return [pool for _, pool in _broadcast("members", members, "--pool-size and --pool-stride", pools)]


def member_sigmas(args):
    """Each member's ``pool_sigma`` (None: the box): one ``--pool-sigma`` value is shared by every
    member, several give one per member."""
    settings = _member_views(args)
    return [s for _, s in _broadcast("members", settings, "--pool-sigma", args.pool_sigma or [None])]


def _pooling(size, stride, sigma):
    """A member's pooling as the tables name it: 7/4 (the box) or 7/4 sigma 3."""
    return f"{size}/{stride}" + ("" if sigma is None else f" sigma {sigma:g}")


def member_atoms(args):
    """Each member's dictionary size ``n_atoms``: one ``--n-atoms`` value is shared by every member,
    several give one per member."""
    return [k for _, k in _broadcast("members", _member_views(args), "--n-atoms", args.n_atoms)]


def member_centrings(args):
    """Each member's ``center_patches``: one ``--center-patches`` value is shared by every member."""
    settings = _member_views(args)
    return [c for _, c in _broadcast("members", settings, "--center-patches", args.center_patches or [True])]


def member_weights(args):
    """Each member's weight in the union (``FeatureUnion``'s ``transformer_weights``), or None for
    equal weights: one ``--member-weight`` value is shared by every member."""
    if args.member_weight is None:
        return None
    settings = _member_views(args)
    if len(settings) == 1:
        raise SystemExit("--member-weight weighs the members of a union: give several --patch-size, --threshold "
                         "or --view values")
    return [w for _, w in _broadcast("members", settings, "--member-weight", args.member_weight)]


def _centring(text):
    """argparse type of ``--center-patches``: a mode of :func:`smt.patches.extract_patches`."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text not in CENTERINGS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(CENTERINGS)}, true, false")
    return text


def smt_params(args):
    """``SMT`` keyword arguments from parsed options (the first member's patch size, threshold and
    centring)."""
    params = {name: getattr(args, name) for name in SMT().get_params() if name not in _OWN}
    patch_size, threshold = member_settings(args)[0]
    pool_size, pool_stride = member_pools(args)[0]
    return {**params, "patch_size": patch_size, "threshold": threshold, "n_atoms": member_atoms(args)[0],
            "center_patches": member_centrings(args)[0],
            "pool_size": pool_size, "pool_stride": pool_stride, "pool_sigma": member_sigmas(args)[0],
            "random_state": args.seed,
            "checkpoint_path": args.checkpoint, "verbose": True,
            "grayscale_augmentation": None if args.grayscale_aug == "copies" else args.grayscale_aug}


def build_model(args):
    """The estimator the options ask for: one ``SMT``; with ``--second-layer`` a
    :class:`~smt.HierarchicalSMT` whose first layer is that ``SMT``; or for several ``--patch-size``
    (and ``--threshold``) values a scikit-learn ``FeatureUnion`` of one ``SMT`` per value, their
    embeddings concatenated.

    Member ``i`` takes the ``i``-th patch size, threshold, view and centring (a single value is
    shared), is seeded ``seed`` plus the number of members before it with the same size, threshold
    and view (so each member is the model its size alone fits, and ``--patch-size 6 6`` is two
    dictionaries of one size, seeds ``seed`` and ``seed + 1``: the control for two sizes; the
    centring does not enter the count, so ``--center-patches channel patch`` changes only the second
    model's centring) and L2-normalises its output, so that every member weighs the same in the kNN's cosine
    unless ``--member-weight`` gives member ``i`` the norm ``w_i`` (its cosine then counts
    ``w_i^2 / sum w^2``). A member's checkpoint is ``<checkpoint>.<i>``.
    """
    params = smt_params(args)
    settings = _member_views(args)
    weights = member_weights(args)  # refused before any fit where there is no union to weigh
    if args.second_layer is not None:
        if len(settings) > 1 or settings[0][2] != "color":
            raise SystemExit("--second-layer takes one first layer, of colour images: give one --patch-size, "
                             "one --threshold and no --view gray")
        second = default_second_layer().set_params(**dict(args.second_layer), verbose=True)
        return HierarchicalSMT(SMT(**params), second, output=args.second_output, second_weight=args.second_weight,
                               chunk_size=args.chunk_size, random_state=args.seed)
    if len(settings) == 1:
        return GrayView(SMT(**params)) if settings[0][2] == "gray" else SMT(**params)
    ckpt = params.pop("checkpoint_path")
    members = []
    pools = member_pools(args)
    for i, ((p, t, view), k, centring, (size, stride), sigma) in enumerate(
            zip(settings, member_atoms(args), member_centrings(args), pools, member_sigmas(args))):
        smt = SMT(**{**params, "patch_size": p, "threshold": t, "n_atoms": k, "center_patches": centring,
                     "normalize_output": True,
                     "pool_size": size, "pool_stride": stride, "pool_sigma": sigma,
                     "random_state": args.seed + settings[:i].count((p, t, view)),
                     "checkpoint_path": None if ckpt is None else f"{ckpt}.{i}"})
        members.append((f"smt{i}_p{p}_t{t}" + ("_gray" if view == "gray" else ""),
                        GrayView(smt) if view == "gray" else smt))
    return FeatureUnion(members, transformer_weights=None if weights is None else
                        {name: w for (name, _), w in zip(members, weights)})


def fit_transform_chunks(model, x, chunk):
    """Fit ``model`` on ``x`` and yield its embeddings ``chunk`` images at a time, from the codes its
    fit computed: a union's members fit one after another, each keeping its codes, and their chunks
    are put side by side (a union that fitted and then transformed would encode every patch twice)."""
    if isinstance(model, FeatureUnion):
        streams = [member.fit_transform_chunks(x, chunk_size=chunk) for _, member in model.transformer_list]
        weights = model.transformer_weights or {}
        names = [name for name, _ in model.transformer_list]
        for parts in zip(*streams):
            yield np.hstack([part * np.float32(weights[name]) if name in weights else part
                             for name, part in zip(names, parts)])
        return
    if isinstance(model, (SMT, GrayView)):
        yield from model.fit_transform_chunks(x, chunk_size=chunk)
        return
    model.fit(x)
    yield from _transformed(model, x, chunk)


def _transformed(model, x, chunk):
    """``model.transform`` of ``x``, ``chunk`` images at a time, as float32."""
    for start in range(0, len(x), chunk):
        yield model.transform(x[start:start + chunk]).astype(np.float32, copy=False)


def transform_chunks(model, x, chunk):
    """``model.transform(x)`` as float32, filled ``chunk`` images at a time into one array: a union's
    ``transform`` would hold every member's whole output and their concatenation at once."""
    out = None
    for start, z in zip(range(0, len(x), chunk), _transformed(model, x, chunk)):
        if out is None:
            out = np.empty((len(x), z.shape[1]), np.float32)
        out[start:start + len(z)] = z
    return out


def _members(model):
    """The fitted ``SMT`` models inside ``model``."""
    if isinstance(model, HierarchicalSMT):
        return [model.first_, model.second_]
    if isinstance(model, GrayView):
        return [model.estimator_]
    return [model] if isinstance(model, SMT) else [m for _, member in model.transformer_list for m in _members(member)]


def _key_value(text):
    """argparse type: ``name=value`` for a parameter of the second layer's ``SMT``."""
    name, sep, value = text.partition("=")
    if not sep or name not in SMT().get_params():
        raise argparse.ArgumentTypeError(f"not NAME=VALUE with NAME an SMT parameter: {text!r}")
    return name, _value(value)


def parser(doc, members=None, pools=None, rgb=True, **defaults):
    """Command-line options of a kNN benchmark; ``defaults`` are the data set's settings,
    ``members`` its default (patch size, threshold) pairs (default: ``SMT``'s one) and ``pools``
    each default member's (pool size, pool stride) (default: ``SMT``'s for every one). ``rgb=False``
    (a gray data set) leaves out the options that make gray copies (``--view``, ``--grayscale-aug``):
    argparse then names them as unknown before any data is loaded."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data root holding the data set folder (default: $SMT_DATA)")
    ap.add_argument("--n-train", type=int, default=None, help="first N training images (default: all)")
    ap.add_argument("--n-test", type=int, default=None, help="first N test images (default: all)")
    _smt_options(ap)
    ap.set_defaults(keep_statistics=False)  # the benchmark never adds to a fit
    members = [tuple(m) for m in (members or [(SMT().patch_size, SMT().threshold)])]
    ap.set_defaults(default_members=members)
    pools = [tuple(p) for p in (pools or [(SMT().pool_size, SMT().pool_stride)] * len(members))]
    if len(pools) != len(members):
        raise ValueError(f"pools ({len(pools)}) must give one (size, stride) per default member ({len(members)})")
    ap.set_defaults(default_pools=pools)
    shown = " + ".join(f"{p}x{p} at t {t}" for p, t in members)
    ap.add_argument("--patch-size", type=_at_least(int, 1), nargs="+", default=None,
                    help="patch size; several values fit one SMT per value and concatenate their "
                         "L2-normalised embeddings (a repeated size and threshold seeded seed + 1, + 2, ...). "
                         f"Default: {shown}; giving this or --threshold replaces that, the other option "
                         f"taking {members[0][0]} or {members[0][1]}")
    ap.add_argument("--threshold", type=_at_least(float, 0), nargs="+", default=None,
                    help="coding threshold (the cosine an atom must reach); several values: one per member, "
                         "as --patch-size")
    ap.add_argument("--n-atoms", type=_at_least(int, 1), nargs="+", default=[SMT().n_atoms],
                    help="dictionary size K; several values: one per member, as --patch-size (a larger K at "
                         "the same code density needs a higher --threshold)")
    ap.add_argument("--center-patches", type=_centring, nargs="+", default=None, metavar="MODE",
                    help="what is subtracted from each patch (SMT's center_patches): channel (its mean per "
                         "channel, the paper's; default), patch (its mean over all channels: keeps colour), "
                         "image (the image's mean, [A]'s: keeps brightness and colour) or false; several "
                         "values: one per member, as --patch-size")
    ap.add_argument("--no-center-patches", dest="center_patches", action="store_const", const=[False],
                    help="subtract nothing (every member)")
    ap.add_argument("--pool-size", type=_at_least(int, 1), nargs="+", default=None,
                    help="average-pooling kernel over the patch grid; several values: one per member, as "
                         "--patch-size. Default: " + " + ".join(f"{k}/{s}" for k, s in pools) + " (size/stride of "
                         "each default member); members named by --patch-size or --threshold: the paper's 4/2")
    ap.add_argument("--pool-stride", type=_at_least(int, 1), nargs="+", default=None,
                    help="average-pooling stride; several values: one per member, as --pool-size")
    ap.add_argument("--pool-sigma", type=_sigma, nargs="+", default=None,
                    help="weight each pooling window's patches by a Gaussian of this width in patch positions "
                         "(SMT's pool_sigma); none: the box, the paper's (default); several values: one per "
                         "member, as --pool-size")
    ap.add_argument("--member-weight", type=_at_least(float, 0, strict=True), nargs="+", default=None,
                    metavar="W", help="the norm of each member's embedding in the union (default: 1 each, "
                    "equal weights); member i's cosine counts W_i^2 / sum W^2 in the kNN "
                    "(benchmarks/knn_member_weights.py chooses them on a validation split)")
    if rgb:
        ap.add_argument("--view", choices=["color", "gray"], nargs="+", default=None,
                        help="what each member sees: the images, or their gray copies (luma, one channel; a "
                             "model of the gray view beside the colour one). One value: every member. "
                             "Default: color")
    ap.add_argument("--second-layer", type=_key_value, nargs="*", default=None, metavar="NAME=VALUE",
                    help="a second SMT layer on the first layer's pooled maps (smt.HierarchicalSMT); its SMT "
                         "parameters are smt.hierarchical.default_second_layer()'s, changed by NAME=VALUE")
    ap.add_argument("--second-output", choices=["both", "second"], default="both",
                    help="with --second-layer: both layers' embeddings (each at unit norm), or the second's")
    ap.add_argument("--second-weight", type=_at_least(float, 0), default=1.0,
                    help="with --second-layer and --second-output both: the second layer's norm")
    ap.add_argument("--knn-precision", choices=["auto", "float32", "bf16"], default="float32",
                    help="of the kNN's similarity GEMM (bf16: a bf16 screen, the float32 neighbours; auto: bf16 "
                         "where the device multiplies bfloat16 in hardware, else float32)")
    if rgb:
        ap.add_argument("--grayscale-aug", nargs="?", const="paired", default=None,
                        choices=["paired", "independent", "context", "copies"],
                        help="fit on gray copies too: 'paired' / 'independent' / 'context' are SMT's "
                             "grayscale_augmentation (colour-only reference set; --gray-weight weighs the gray "
                             "copy in a paired context); 'copies' appends them to the training set like "
                             "--flips (fit and kNN reference set). Default variant: paired")
    else:
        ap.set_defaults(view=None, grayscale_aug=None)
    ap.add_argument("--flips", action=argparse.BooleanOptionalAction, default=False,
                    help="fit on train + mirrored train; the mirrors join the kNN reference set")
    ap.add_argument("--chunk-size", type=_at_least(int, 1), default=2000,
                    help="training embeddings per kNN update; the kNN stage holds a chunk about 1.5 times "
                         "(float32, normalised in place, and the bf16 screen's copy; three times with "
                         "--whiten-pca): 2000 CIFAR images at d 384 are 0.44 GB in float32")
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--temperature", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="checkpoint file for the fit (resumes when present)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    ap.add_argument("--whiten-pca", type=_at_least(int, 0), default=0, metavar="P",
                    help="also score the embedding centred, projected on its top P principal directions and "
                         "whitened (learned on the first --pca-images training embeddings), with k and T "
                         "chosen on a validation split of the training set (default 0: not scored)")
    ap.add_argument("--pca-images", type=_at_least(int, 2), default=10000,
                    help="training embeddings the whitened PCA is learned from")
    ap.add_argument("--hub-penalty", type=_at_least(float, 0), nargs="+", default=[0.0], metavar="BETA",
                    help="rank and vote by s - BETA * r_j, r_j the mean similarity of training embedding j to "
                         "its 10 most similar probes: the validation split's training images (the last 10%% of "
                         "the originals; a probe's own image and copies left out, no label read). The "
                         "reference side of CSLS (hubness reduction). Default 0: the paper's protocol. Several "
                         "values: each is scored (the first gives the result line), and (BETA, k, T) is chosen "
                         "on the validation split over them and --k-grid / --t-grid")
    ap.add_argument("--k-grid", type=_at_least(int, 1), nargs="+", default=[10, 20, 30, 50, 100, 200, 400, 800])
    ap.add_argument("--t-grid", type=_at_least(float, 0, strict=True), nargs="+",
                    default=[0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.2])
    if isinstance(defaults.get("n_atoms"), int):
        defaults["n_atoms"] = [defaults["n_atoms"]]
    ap.set_defaults(**defaults)
    return ap


def resolve_precisions(args):
    """Replace ``--precision auto`` and ``--knn-precision auto`` by bf16 where the device multiplies
    bfloat16 matrices in hardware (AMX or AVX512-BF16 CPUs, CUDA from Ampere) and float32 elsewhere,
    where PyTorch emulates the bf16 GEMM (100x slower than float32 on an AVX2 CPU). Returns a line
    that says what was chosen, or None when neither option was auto."""
    asked = [name for name in ("precision", "knn_precision") if getattr(args, name) == "auto"]
    if not asked:
        return None
    device = resolve_device(args.device)
    native = native_bf16(device)
    for name in asked:
        setattr(args, name, "bf16" if native else "float32")
    return (f"precision auto on {device}: " + ("bf16 (bfloat16 matrix units)" if native else
            "float32 (no bfloat16 matrix units: PyTorch would emulate bf16)"))


def load_images(args, load):
    """The training and test images the options ask for: the first ``--n-train`` / ``--n-test``,
    the training images followed by their gray copies (``--grayscale-aug copies``) and mirrors
    (``--flips``), copy ``j`` of image ``i`` at ``i + j * n_originals`` (as
    :func:`validation_split` expects).

    Returns
    -------
    x_train, y_train, x_test, y_test, n_originals
        Images (n, H, W, C) and labels (n,); ``n_originals`` is the number of training images
        before the copies.
    """
    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "test")
    x_train, y_train = x_train[:args.n_train], y_train[:args.n_train]
    x_test, y_test = x_test[:args.n_test], y_test[:args.n_test]
    n_originals = len(x_train)
    if args.grayscale_aug == "copies":
        x_train, y_train = add_gray_copies(x_train, y_train)
    if args.flips:
        x_train, y_train = add_mirrors(x_train, y_train)
    return x_train, y_train, x_test, y_test, n_originals


def run(args, load, name, paper):
    """Run the benchmark.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parser`.
    load : callable
        ``load(root, split) -> (images, labels)``.
    name : str
        Printed with the result.
    paper : str
        The paper's number(s), printed next to the result.

    Returns
    -------
    dict
        ``{"top1": ..., "top5": ...}``.
    """
    chosen = resolve_precisions(args)
    if chosen:
        print(chosen)
    # Before a fit that may take an hour: which members the options name (a --threshold list alone
    # gives every member the first default patch size, not the default members' sizes).
    print("members (patch size, threshold, view, pooling, K): " + "; ".join(
        f"{p}, {t}, {v}, {_pooling(size, stride, sigma)}, {k}" for (p, t, v), (size, stride), sigma, k in
        zip(_member_views(args), member_pools(args), member_sigmas(args), member_atoms(args))))
    meter = StageMeter()
    with meter.stage("load"):
        x_train, y_train, x_test, y_test, n_originals = load_images(args, load)
    model = build_model(args)
    chunk = args.chunk_size
    # The training embeddings stream through the kNN, never all in memory; they come from the codes
    # the fit computed (every training patch is encoded once).
    train_chunks = fit_transform_chunks(model, x_train, chunk)
    with meter.stage("fit (+ embed the first train chunk)"):
        first = next(train_chunks)
    with meter.stage("embed test"):
        z_test = transform_chunks(model, x_test, chunk)
    post = _WhitenedStream(args.whiten_pca, min(args.pca_images, len(x_train))) if args.whiten_pca else None
    z_probes = probes = val_refs = None
    if any(args.hub_penalty) or len(args.hub_penalty) > 1:
        with meter.stage("embed the hub probes"):
            probes, val_refs = validation_split(n_originals, len(x_train) // n_originals)
            z_probes = transform_chunks(model, x_train[probes], chunk)
    with meter.stage("embed train + kNN"):
        # Without the PCA stage nothing reads the embeddings after the kNN: it normalises them in
        # place rather than holding a copy of the 10,000 test embeddings (2.2 GB at d 384).
        hubs = _HubKNNs(args, z_test, y_train, n_originals, z_probes, probes, val_refs, copy=post is not None)
        del z_probes
        if post is None:
            del z_test  # now the kNN's own normalised rows
        hubs.merge(first, 0)
        if post is not None:
            post.add(first, z_test)
        del first
        for i, z in enumerate(train_chunks, start=1):
            hubs.merge(z, i * chunk)
            if post is not None:
                post.add(z, z_test)
        knn = hubs.test[0]  # it keeps max(--k-grid) neighbours when (beta, k, T) is chosen: vote with --k
        acc = knn.accuracy(y_test, k=args.k, temperature=args.temperature)
    # solo-learn's defaults (k 20, T 0.07), for comparison with other tables (spec 10-Q10)
    acc["top1_k20_t0.07"] = knn.accuracy(y_test, (1,), k=20, temperature=0.07)["top1"] if knn.k >= 20 else None
    if hubs.choose:
        acc["hub_penalty"] = hubs.choice(y_test, probes, args)
    if post is not None:
        del z_test, knn, hubs
        with meter.stage(f"kNN on whitened PCA {args.whiten_pca}"):
            acc["whitened_pca"] = post.score(y_train, y_test, n_originals, args)

    extras = [name for name, on in (("gray copies", args.grayscale_aug == "copies"), ("mirrors", args.flips)) if on]
    fitted_on = f"train {len(x_train)}" + (f" (with {' and '.join(extras)})" if extras else "")
    members = _members(model)
    n_features = int(model.n_features_out_) if isinstance(model, HierarchicalSMT) else \
        sum(int(m.n_features_out_) for m in members)
    print(f"\n{name} kNN (k={args.k}, T={args.temperature}), {fitted_on}, test {len(x_test)}, "
          f"embedding {n_features}" + (f" (members: patch size, threshold {[(m.patch_size, m.threshold) for m in members]}"
                                       f", pooling {[_pooling(m.pool_size, m.pool_stride, m.pool_sigma) for m in members]}"
                                       f"{', views ' + str(args.view) if args.view else ''}"
                                       f"{', weights ' + str(member_weights(args)) if args.member_weight else ''})"
                                       if len(members) > 1 else ""))
    if isinstance(model, HierarchicalSMT):
        print(f"second layer on {model.map_shape_} maps: {model.second_.get_params()}")
    for m in members:
        print(json.dumps({k: round(v, 3) for k, v in m.fit_stats_.items()}))
    print(meter.table())
    beta = args.hub_penalty[0]
    hub = f", hub-reduced kNN at beta {beta}: not the paper's protocol" if beta else ""
    print(f"top-1 {acc['top1']:.2f}  top-5 {acc['top5']:.2f}   (paper: {paper}{hub})")
    if acc["top1_k20_t0.07"] is not None:
        print(f"top-1 with solo-learn's k 20, T 0.07: {acc['top1_k20_t0.07']:.2f}")
    if "hub_penalty" in acc:
        h = acc["hub_penalty"]
        print("hub penalty beta (0: the paper's kNN) | test top-1 | validation top-1, "
              f"at k {args.k}, T {args.temperature}")
        for b, t1, v1 in zip(h["betas"], h["top1"], h["val_top1"]):
            print(f"  {b:g} | {t1:.2f} | {v1:.2f}")
        print(f"beta {h['chosen'][0]:g}, k {h['chosen'][1]}, T {h['chosen'][2]:g} chosen on validation "
              f"(val top-1 {h['val_chosen']:.2f}): test top-1 {h['top1_chosen']:.2f}")
    if post is not None:
        w = acc["whitened_pca"]
        print(f"whitened PCA {args.whiten_pca} (learned on the first {post.n_fit} training embeddings): "
              f"top-1 {w['top1']:.2f} at k {args.k}, T {args.temperature}; k {w['k']}, T {w['t']} chosen on "
              f"validation (val top-1 {w['val_top1']:.2f}): test top-1 {w['top1_chosen']:.2f}; "
              f"learning and projecting took {post.seconds:.0f} s of 'embed train + kNN'")
    if args.json:
        used = [int(np.count_nonzero(m.atom_usage_)) for m in members]
        row = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} {torch.get_num_threads()} threads",
               "device": str(resolve_device(args.device)),
               "args": vars(args), "top1": acc["top1"], "top5": acc["top5"],
               "top1_k20_t0.07": acc["top1_k20_t0.07"], "whitened_pca": acc.get("whitened_pca"),
               "hub_penalty": acc.get("hub_penalty"),
               "fit_stats": members[0].fit_stats_ if len(members) == 1 else [m.fit_stats_ for m in members],
               "stages": meter.rows, "n_features_out": n_features,
               "atom_usage_nonzero": used[0] if len(used) == 1 else used}
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    return acc

