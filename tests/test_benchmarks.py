"""The benchmark scripts run end to end on a few real images (full-size runs are recorded in
benchmarks/RESULTS.md, not tested)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

TINY = ["--n-train", "300", "--n-test", "100", "--n-atoms", "64", "--n-components", "8"]


def test_knn_mnist_script(data_root, tmp_path, capsys):
    import knn_mnist
    acc = knn_mnist.main(["--data", data_root, *TINY, "--json", str(tmp_path / "r.jsonl")])
    out = capsys.readouterr().out
    assert "top-1" in out and "peak GiB" in out
    row = json.loads((tmp_path / "r.jsonl").read_text())
    assert row["top1"] == acc["top1"] and 50 < acc["top1"] <= 100  # 10 classes: chance is 10


def test_knn_cifar_script_with_augmentations(data_root, capsys):
    if not (Path(data_root) / "cifar10").exists():
        pytest.skip("no CIFAR-10 copy")
    import knn_cifar
    acc = knn_cifar.main(["--data", data_root, *TINY, "--grayscale-aug", "--flips", "--knn-precision", "bf16",
                          "--whiten-pca", "16", "--pca-images", "200", "--k-grid", "10", "30", "--t-grid", "0.03"])
    out = capsys.readouterr().out
    assert "train 600 (with mirrors)" in out and "paper: 83.2" in out
    assert 0 <= acc["top1"] <= 100
    white = acc["whitened_pca"]
    assert white["k"] in (10, 30) and white["t"] == 0.03 and 0 <= white["top1_chosen"] <= 100
    assert "whitened PCA 16 (learned on the first 200 training embeddings)" in out


@pytest.mark.parametrize("argv, paper", [
    (["--patch-size", "6", "--no-flips"], "81.1"),
    (["--patch-size", "6", "6", "--threshold", "0.3", "0.45", "--view", "color", "gray", "--no-flips"], "83.2")])
def test_knn_cifar_states_the_paper_figure_of_its_reading(data_root, capsys, argv, paper):
    """A gray-view member is a reading of grayscale augmentation: the result is printed next to the
    paper's 83.2, not the 81.1 without augmentation."""
    if not (Path(data_root) / "cifar10").exists():
        pytest.skip("no CIFAR-10 copy")
    import knn_cifar
    knn_cifar.main(["--data", data_root, *TINY, *argv])
    assert f"(paper: {paper})" in capsys.readouterr().out


def test_speed_script_prints_every_table(data_root, capsys):
    if not (Path(data_root) / "cifar10").exists():
        pytest.skip("no CIFAR-10 copy")
    import speed
    result = speed.main(["--data", data_root, "--stage-images", "16", "--stage-atoms", "64",
                         "--n-images", "40", "80", "--n-atoms", "32", "64", "--atoms-images", "40", "60",
                         "--flagship-images", "0", "--knn-queries", "20", "--knn-references", "60",
                         "--knn-chunk", "20"])
    out = capsys.readouterr().out
    assert "of the float32 matmul rate" in out and "plain scipy.linalg.eigh" in out
    assert "G pair updates/s" in out and "precision='bf16'" in out
    # rates are ratios of two timings: a loaded machine can put either side anywhere, so only their sign is checked
    assert result["encode_fraction"] > 0 and result["pair_rate"] > 0
    # where bf16 is emulated the fixed-size GEMMs are smaller or skipped (minutes there otherwise)
    from smt._device import native_bf16
    native = native_bf16("cpu")
    assert result["matmul_flops_bf16"] > 0 and ("(emulated: no bf16 matrix units" in out) != native
    assert (result["knn_gemm"]["bfloat16"] is None) != native and result["knn_gemm"]["float32"] > 0
    assert result["encode_gemm_fraction"] > 0 and result["statistics_over_encode"] > 0
    assert 0 <= result["bf16_code_difference"] < 0.05
    assert "bf16 screen" in out and result["knn_screen"]["same_neighbours"]
    assert result["knn_screen"]["same_neighbour_sets"] and result["knn_screen"]["reordered_ranks"] == 0
    assert 0 <= result["knn_screen"]["rescored_fraction"] <= 1
    # images scale at the first K, atoms at every --atoms-images
    assert [(n, k) for n, k, *_ in result["scaling"]] == [(40, 32), (80, 32), (40, 64), (60, 64)]
    assert all(sec > 0 and gib > 0 for _, _, sec, gib, _ in result["scaling"])


def test_words_script_puts_smt_next_to_both_baselines(data_root, capsys):
    if not (Path(data_root) / "wikitext-2").exists():
        pytest.skip("no WikiText-2 copy")
    pytest.importorskip("gensim")
    import words
    table = words.main(["--data", data_root, "--dim", "20", "--min-count", "20", "--workers", "1"])
    out = capsys.readouterr().out
    assert "wikitext-2 valid+test" in out and "| SMT |" in out
    assert set(table) == {"SMT", "word2vec", "PPMI-SVD"}
    for row in table.values():
        assert row["MEN"]["coverage"] > 0.1 and -1 <= row["MEN"]["spearman"] <= 1
    assert table["SMT"]["MEN"]["spearman"] > 0.2  # measured 0.46 at d 300, min count 5


def test_gpu_script_runs_end_to_end_on_tiny_settings(data_root, tmp_path, capsys):
    """The GPU script is tried on CPU here (CI has no GPU): data folder, stage table, CIFAR rows."""
    if not (Path(data_root) / "cifar10").exists():
        pytest.skip("no CIFAR-10 copy")
    import gpu
    import gpu_data
    gpu_data.main(["--data", data_root, "--out", str(tmp_path), "--n-train", "120", "--n-test", "40"])
    assert {f.name for f in tmp_path.iterdir()} >= {"mnist", "cifar10_train_x.npy", "cifar10_test_y.npy"}
    result = gpu.main(["--data", str(tmp_path), "--device", "cpu", "--n-atoms", "64", "--n-components", "8",
                       "--stage-images", "16", "--skip-tests", "--skip-mnist"])
    out = capsys.readouterr().out
    assert "extrapolated" in out and "statistics (encode + counts)" in out
    assert 0 <= result["top1"] <= 100 and result["cifar10_seconds_extrapolated"] > 0


def test_gap_ledger_is_complete_and_matches_the_readme():
    import csv
    root = Path(__file__).resolve().parents[1]
    with open(root / "benchmarks" / "ledger.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["key", "paper", "best", "command"]
    assert [r["key"] for r in rows] == ["mnist", "cifar10", "cifar10_gray", "cifar100", "cifar100_gray"]
    readme = (root / "README.md").read_text()
    results = (root / "benchmarks" / "RESULTS.md").read_text()
    for r in rows:
        assert 0 < float(r["paper"]) <= 100 and r["command"].startswith("python benchmarks/")
        line = next(line for line in readme.splitlines() if line.startswith(f"| {r['key']} |"))
        assert f"| {r['paper']} |" in line and f"`{r['command']}`" in line
        assert f"`{r['command']}`" in results
        if r["best"]:
            assert 0 < float(r["best"]) <= 100 and r["best"] in line


def test_knn_benchmark_defaults_are_the_best_measured_settings(monkeypatch):
    """knn_cifar: K 8192, d 384, mirrors, bf16 where native, and 6x6 at t 0.3 pooled 7/4 beside 4x4 at
    t 0.45 pooled 5/3 (80.63); knn_mnist: 7x7 patches pooled 4/2 (99.11)."""
    import _knn
    import knn_cifar
    import knn_mnist
    seen = []
    monkeypatch.setattr(_knn, "run", lambda args, *rest: seen.append(args))
    knn_cifar.main([])
    knn_cifar.main(["--no-flips"])
    knn_mnist.main([])
    cifar, strict, mnist = seen
    assert _knn.member_settings(cifar) == [(6, 0.3), (4, 0.45)]
    assert [(m.pool_size, m.pool_stride) for _, m in _knn.build_model(cifar).transformer_list] == [(7, 4), (5, 3)]
    assert (_knn.build_model(mnist).pool_size, _knn.build_model(mnist).pool_stride) == (4, 2)
    assert (cifar.n_atoms, cifar.n_components, cifar.flips, cifar.precision, cifar.knn_precision) == \
        ([8192], 384, True, "auto", "auto")
    assert [m.n_atoms for _, m in _knn.build_model(cifar).transformer_list] == [8192, 8192]
    assert _knn.build_model(mnist).n_atoms == 4096
    assert not strict.flips
    assert _knn.member_settings(mnist)[0][0] == 7 and mnist.whiten_eps == 0.1


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_device_has_bf16_units(monkeypatch, native):
    """An emulated bf16 GEMM ran 100x slower than float32 on an AVX2 CPU: the CIFAR defaults must
    not pick it there; explicit values are kept."""
    import _knn
    import knn_cifar
    seen = []
    monkeypatch.setattr(_knn, "run", lambda args, *rest: seen.append(args))
    monkeypatch.setattr(_knn, "native_bf16", lambda device: native)
    knn_cifar.main([])
    knn_cifar.main(["--precision", "float32", "--knn-precision", "bf16"])
    auto, explicit = seen
    line = _knn.resolve_precisions(auto)
    expected = "bf16" if native else "float32"
    assert (auto.precision, auto.knn_precision) == (expected, expected) and expected in line
    assert _knn.resolve_precisions(explicit) is None
    assert (explicit.precision, explicit.knn_precision) == ("float32", "bf16")


def test_knn_benchmark_offers_every_smt_parameter():
    import _knn

    from smt import SMT
    ap = _knn.parser("", n_atoms=128)
    args = ap.parse_args(["--context", "3", "--max-active", "40", "--whiten-eps", "0.1", "--no-normalize-output"])
    params = _knn.smt_params(args)
    assert set(params) == set(SMT().get_params())
    assert params["context"] == 3 and params["max_active"] == 40 and params["whiten_eps"] == 0.1
    assert params["n_atoms"] == 128 and params["random_state"] == 0 and params["verbose"]
    assert ap.parse_args(["--context", "image"]).context == "image"
    SMT(**params)  # the options build a valid estimator


def test_whitened_pca_is_scikit_learns_whitened_pca():
    import _knn
    from sklearn.decomposition import PCA
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 800)) * np.linspace(3, 0.1, 800) + 5).astype(np.float32)
    ours = _knn.WhitenedPCA(20).fit(x.copy()).transform(x).numpy()
    ref = PCA(20, whiten=True, svd_solver="full").fit(x).transform(x)
    signs = np.sign((ours * ref).sum(0))
    # scikit-learn's variances divide by n - 1, ours by n
    np.testing.assert_allclose(ours * signs, ref * np.sqrt(len(x) / (len(x) - 1)), atol=2e-3)
    np.testing.assert_allclose(ours.var(0), 1, atol=1e-3)


def test_validation_split_keeps_the_queries_copies_out_of_the_references():
    import _knn
    queries, refs = _knn.validation_split(20, 3, fraction=0.1)  # images, mirrors, gray copies
    assert queries.tolist() == [18, 19]
    assert not set(refs) & {18, 19, 38, 39, 58, 59}
    assert len(refs) == 60 - 6


@pytest.mark.parametrize("option, value, message", [
    ("--whiten-pca", "-1", "-1 is not at least 0"), ("--whiten-pca", "1.5", "not an integer: '1.5'"),
    ("--pca-images", "1", "1 is not at least 2"), ("--k-grid", "0", "0 is not at least 1"),
    ("--t-grid", "0", "0.0 is not above 0"), ("--t-grid", "warm", "not a number: 'warm'"),
    ("--chunk-size", "0", "0 is not at least 1"), ("--patch-size", "0", "0 is not at least 1"),
    ("--threshold", "-0.1", "-0.1 is not at least 0"), ("--view", "grey", "invalid choice: 'grey'"),
    ("--n-atoms", "0", "0 is not at least 1"), ("--n-atoms", "1.5", "not an integer: '1.5'")])
def test_post_processing_options_refuse_bad_values_by_name(option, value, message, capsys):
    import _knn
    with pytest.raises(SystemExit):
        _knn.parser("", n_atoms=64).parse_args([option, value])
    err = capsys.readouterr().err
    assert f"argument {option}" in err and message in err


@pytest.mark.parametrize("argv", [["--view", "gray"], ["--grayscale-aug"], ["--grayscale-aug", "copies"]])
def test_mnist_has_no_gray_copy_options(argv, capsys, monkeypatch):
    """MNIST is gray already: the options that make gray copies are unknown there, refused before
    any data is loaded."""
    import _knn
    import knn_mnist
    monkeypatch.setattr(_knn, "run", lambda *a: pytest.fail("the benchmark ran"))
    with pytest.raises(SystemExit):
        knn_mnist.main(argv)
    assert f"unrecognized arguments: {' '.join(argv)}" in capsys.readouterr().err


def test_several_patch_sizes_build_a_union_of_unit_norm_members():
    import _knn
    from sklearn.pipeline import FeatureUnion

    from smt import SMT
    ap = _knn.parser("", n_atoms=64)
    one = _knn.build_model(ap.parse_args([]))
    assert isinstance(one, SMT) and one.patch_size == 6 and one.threshold == 0.3
    union = _knn.build_model(ap.parse_args(["--patch-size", "6", "10", "--threshold", "0.3", "0.18",
                                            "--seed", "4", "--checkpoint", "c.npz"]))
    assert isinstance(union, FeatureUnion)
    got = [(m.patch_size, m.threshold, m.random_state, m.normalize_output, m.checkpoint_path, m.n_atoms)
           for _, m in union.transformer_list]
    # each member is the model its size alone fits (same seed), so its own checkpoint serves
    assert got == [(6, 0.3, 4, True, "c.npz.0", 64), (10, 0.18, 4, True, "c.npz.1", 64)]
    # the benchmark never adds to a fit: each member drops its statistics after the solve
    assert [m.keep_statistics for _, m in union.transformer_list] == [False, False]
    assert _knn.build_model(ap.parse_args(["--keep-statistics"])).keep_statistics is True
    shared = _knn.build_model(ap.parse_args(["--patch-size", "6", "6", "4", "6", "--threshold", "0.3"]))
    assert [(m.patch_size, m.threshold, m.random_state) for _, m in shared.transformer_list] == \
        [(6, 0.3, 0), (6, 0.3, 1), (4, 0.3, 0), (6, 0.3, 2)]
    with pytest.raises(SystemExit, match="must have one value or the same number"):
        _knn.build_model(ap.parse_args(["--patch-size", "6", "8", "10", "--threshold", "0.3", "0.2"]))


def test_center_patches_is_one_mode_per_member_or_one_for_all(capsys):
    import _knn
    ap = _knn.parser("", n_atoms=64)

    def centrings(*argv):
        model = _knn.build_model(ap.parse_args(list(argv)))
        members = [getattr(m, "estimator", m) for _, m in model.transformer_list] if hasattr(
            model, "transformer_list") else [model]
        return [(m.center_patches, m.random_state) for m in members]
    assert centrings() == [(True, 0)]
    assert centrings("--center-patches", "patch") == [("patch", 0)]
    assert centrings("--no-center-patches") == [(False, 0)]
    assert centrings("--patch-size", "6", "6", "--center-patches", "image") == [("image", 0), ("image", 1)]
    # the centring is not part of a member's seed count: only the second model's centring changes
    assert centrings("--patch-size", "6", "6", "6", "--view", "color", "color", "gray",
                     "--center-patches", "channel", "patch", "channel") == [("channel", 0), ("patch", 1), ("channel", 0)]
    with pytest.raises(SystemExit, match="must have one value or the same number"):
        centrings("--patch-size", "6", "6", "4", "--center-patches", "channel", "patch")
    with pytest.raises(SystemExit):
        ap.parse_args(["--center-patches", "pixel"])
    assert "'pixel' is not one of channel, patch, image" in capsys.readouterr().err


def test_default_members_and_what_replaces_them():
    import _knn
    from sklearn.pipeline import FeatureUnion

    from smt import SMT, HierarchicalSMT
    ap = _knn.parser("", members=[(6, 0.3), (4, 0.45)], n_atoms=64)

    def settings(*argv):
        model = _knn.build_model(ap.parse_args(list(argv)))
        ms = [model] if isinstance(model, SMT) else [m for _, m in model.transformer_list]
        return [(m.patch_size, m.threshold, m.random_state) for m in ms], isinstance(model, FeatureUnion)
    assert settings() == ([(6, 0.3, 0), (4, 0.45, 0)], True)
    # either option replaces the default pair; the other takes the first default member's value
    assert settings("--patch-size", "6") == ([(6, 0.3, 0)], False)
    assert settings("--threshold", "0.35") == ([(6, 0.35, 0)], False)
    assert settings("--patch-size", "4", "8") == ([(4, 0.3, 0), (8, 0.3, 0)], True)
    with pytest.raises(SystemExit, match="one first layer"):
        _knn.build_model(ap.parse_args(["--second-layer", "patch_size=1"]))
    assert isinstance(_knn.build_model(ap.parse_args(["--patch-size", "6", "--second-layer", "patch_size=1"])),
                      HierarchicalSMT)


@pytest.mark.parametrize("pooling, grids, printed, first", [
    # patch grids 10x10 (patch 3) and 9x9 (patch 4), each pooled 3/3 to 3x3
    (["--pool-size", "3", "--pool-stride", "3"], [(3, 3), (3, 3)], "pooling ['3/3', '3/3']",
     "3, 0.3, color, 3/3, 16; 4, 0.25, color, 3/3, 16"),
    # one value per member: 10x10 pooled 3/3 to 3x3, 9x9 pooled 2/2 to 4x4
    (["--pool-size", "3", "2", "--pool-stride", "3", "2"], [(3, 3), (4, 4)], "pooling ['3/3', '2/2']",
     "3, 0.3, color, 3/3, 16; 4, 0.25, color, 2/2, 16"),
])
def test_union_benchmark_runs_end_to_end(tmp_path, capsys, pooling, grids, printed, first):
    """A two-member run on made-up images: the kNN sees the concatenated embedding, each member
    pooled with its own ``--pool-size`` / ``--pool-stride`` value (or the shared one); the members
    are stated before the fit, not only with the result."""
    import _knn
    rng = np.random.default_rng(0)
    x = (rng.random((60, 12, 12, 3)) * 255).astype(np.uint8)
    y = np.arange(60) % 3

    def load(root, split):
        return (x, y) if split == "train" else (x[:20], y[:20])
    args = _knn.parser("", n_atoms=16, n_components=4, dict_epochs=0, precision="float32").parse_args(
        ["--patch-size", "3", "4", "--threshold", "0.3", "0.25", *pooling, "--json", str(tmp_path / "r.jsonl")])
    acc = _knn.run(args, load, "made-up", "-")
    assert 0 <= acc["top1"] <= 100
    row = json.loads((tmp_path / "r.jsonl").read_text())
    # of 4 components each
    assert row["n_features_out"] == sum(h * w for h, w in grids) * 4 and len(row["fit_stats"]) == 2
    out = capsys.readouterr().out
    assert "members: patch size, threshold [(3, 0.3), (4, 0.25)]" in out and printed in out
    stated = f"members (patch size, threshold, view, pooling, K): {first}\n"
    assert stated in out and out.index(stated) < out.index("made-up kNN")


def test_pool_sigma_option_gives_each_member_its_window(monkeypatch):
    """--pool-sigma: one value shared, one per member (none: the box), the box by default; a count
    that fits neither is refused by name."""
    import _knn
    import knn_cifar
    seen = []
    monkeypatch.setattr(_knn, "run", lambda args, *rest: seen.append(args))
    for argv in ([], ["--pool-sigma", "3"], ["--pool-sigma", "3", "none"], ["--patch-size", "6", "--pool-sigma", "2.5"],
                 ["--pool-sigma", "1", "2", "3"]):
        knn_cifar.main(argv)
    default, shared, each, single, wrong = seen
    sigmas = [[m.pool_sigma for _, m in _knn.build_model(a).transformer_list] for a in (default, shared, each)]
    assert sigmas == [[None, None], [3.0, 3.0], [3.0, None]]
    assert _knn.build_model(single).pool_sigma == 2.5
    with pytest.raises(SystemExit, match="--pool-sigma"):
        _knn.build_model(wrong)


def test_n_atoms_option_gives_each_member_its_dictionary_size(monkeypatch):
    """--n-atoms: one value shared by every member, one per member (a K 16384 member beside a K 8192
    one), and a count that fits neither refused by name (bad values: the table above)."""
    import _knn
    import knn_cifar
    seen = []
    monkeypatch.setattr(_knn, "run", lambda args, *rest: seen.append(args))
    for argv in (["--n-atoms", "4096"], ["--n-atoms", "16384", "8192"], ["--patch-size", "6", "--n-atoms", "16384"],
                 ["--n-atoms", "1024", "2048", "4096"]):
        knn_cifar.main(argv)
    shared, each, single, wrong = seen
    assert [m.n_atoms for _, m in _knn.build_model(shared).transformer_list] == [4096, 4096]
    members = _knn.build_model(each).transformer_list
    assert [(m.patch_size, m.threshold, m.n_atoms) for _, m in members] == [(6, 0.3, 16384), (4, 0.45, 8192)]
    assert _knn.build_model(single).n_atoms == 16384 and _knn.smt_params(single)["n_atoms"] == 16384
    with pytest.raises(SystemExit, match="--n-atoms"):
        _knn.build_model(wrong)


def test_pooling_options_follow_the_members(monkeypatch, capsys):
    """Default members keep their own pooling; members named on the command line take the paper's
    4/2 (old commands still mean what they meant); a value left out is the paper's; one value is
    shared; a count that fits neither is refused by name."""
    import _knn
    import knn_cifar
    seen = []
    monkeypatch.setattr(_knn, "run", lambda args, *rest: seen.append(args))
    for argv in (["--patch-size", "6"], ["--pool-size", "4", "--pool-stride", "2"], ["--pool-size", "6", "5"],
                 ["--patch-size", "6", "4", "6", "--view", "color", "color", "gray"], ["--pool-size", "4", "5", "6"]):
        knn_cifar.main(argv)
    single, shared, sizes, three, wrong = seen
    assert (_knn.build_model(single).pool_size, _knn.build_model(single).pool_stride) == (4, 2)
    assert _knn.member_pools(shared) == [(4, 2), (4, 2)]
    assert _knn.member_pools(sizes) == [(6, 2), (5, 2)]
    assert _knn.member_pools(three) == [(4, 2)] * 3
    with pytest.raises(SystemExit, match="--pool-size"):
        _knn.member_pools(wrong)
    for argv, option in ((["--pool-stride", "0"], "--pool-stride"), (["--pool-size", "seven"], "--pool-size"),
                         (["--pool-sigma", "0"], "--pool-sigma"), (["--pool-sigma", "wide"], "--pool-sigma")):
        with pytest.raises(SystemExit):
            knn_cifar.main(argv)
        assert f"argument {option}" in capsys.readouterr().err


def test_union_embeds_its_training_images_from_the_codes_of_its_fit(monkeypatch):
    """Each member of a union encodes the training patches once (in its fit), and the chunks equal
    the members' ``transform`` side by side, as the test images' chunked embedding does."""
    import _knn

    from smt import SMT
    rng = np.random.default_rng(1)
    x = (rng.random((50, 12, 12, 3)) * 255).astype(np.uint8)
    args = _knn.parser("", n_atoms=16, n_components=4, dict_epochs=0, precision="float32").parse_args(
        ["--patch-size", "3", "4", "--threshold", "0.3", "0.25", "--pool-size", "3", "--pool-stride", "3"])
    union = _knn.build_model(args)

    def encode_again(self, *a, **k):
        raise AssertionError("the training images were encoded a second time")
    with monkeypatch.context() as m:
        m.setattr(SMT, "_embed_images", encode_again)
        chunks = list(_knn.fit_transform_chunks(union, x, 16))
    assert [len(c) for c in chunks] == [16, 16, 16, 2]
    members = [member.transform(x) for _, member in union.transformer_list]
    np.testing.assert_allclose(np.vstack(chunks), np.hstack(members), rtol=1e-5, atol=1e-6)
    z = _knn.transform_chunks(union, x, 16)
    assert z.dtype == np.float32 and z.shape == (50, 2 * 3 * 3 * 4)
    np.testing.assert_allclose(z, np.hstack(members), rtol=1e-5, atol=1e-6)


def test_second_layer_benchmark_runs_end_to_end(tmp_path, capsys):
    """``--second-layer NAME=VALUE``: a HierarchicalSMT whose first layer is the benchmark's SMT."""
    import _knn

    from smt import HierarchicalSMT
    rng = np.random.default_rng(0)
    x = (rng.random((60, 14, 14, 3)) * 255).astype(np.uint8)
    y = np.arange(60) % 3

    def load(root, split):
        return (x, y) if split == "train" else (x[:20], y[:20])
    ap = _knn.parser("", n_atoms=16, n_components=4, dict_epochs=0, pools=[(2, 1)], precision="float32")
    with pytest.raises(SystemExit):
        ap.parse_args(["--second-layer", "n_atom=8"])
    assert "not NAME=VALUE with NAME an SMT parameter: 'n_atom=8'" in capsys.readouterr().err
    assert _knn.build_model(ap.parse_args(["--second-layer", "center_patches=True"])).second.center_patches is True
    assert _knn._key_value("max_active=none") == ("max_active", None)
    args = ap.parse_args(["--second-layer", "n_atoms=8", "n_components=2", "pool_size=2", "pool_stride=1",
                          "coding=top_k", "n_nonzero=2", "--second-weight", "0.5", "--json", str(tmp_path / "r.jsonl")])
    model = _knn.build_model(args)
    assert isinstance(model, HierarchicalSMT) and model.second.center_patches is False
    assert (model.second.n_atoms, model.second.coding, model.second_weight) == (8, "top_k", 0.5)
    acc = _knn.run(args, load, "made-up", "-")
    assert 0 <= acc["top1"] <= 100
    row = json.loads((tmp_path / "r.jsonl").read_text())
    # first: 9x9 grid (patch 6 on 14x14) pooled 2/1 to 8x8 of 4; second: 6x6 grid (patch 3) pooled 2/1 to 5x5 of 2
    assert row["n_features_out"] == 8 * 8 * 4 + 5 * 5 * 2 and len(row["fit_stats"]) == 2


def test_a_gray_view_member_is_an_smt_of_the_luma_images(tmp_path, capsys):
    """``--view color gray``: the second member is fitted on and applied to the gray copies (one
    channel); its embedding equals an SMT fitted on those copies by hand, and the run scores the two
    side by side."""
    import _knn
    from sklearn.pipeline import FeatureUnion

    from smt import SMT, GrayView
    from smt.augment import to_grayscale
    rng = np.random.default_rng(2)
    x = (rng.random((60, 12, 12, 3)) * 255).astype(np.uint8)
    y = np.arange(60) % 3
    ap = _knn.parser("", n_atoms=16, n_components=4, dict_epochs=0, pools=[(3, 3)], precision="float32")
    ckpt = str(tmp_path / "c.npz")
    union = _knn.build_model(ap.parse_args(["--patch-size", "3", "--view", "color", "gray", "--checkpoint", ckpt,
                                            "--pool-size", "3", "--pool-stride", "3"]))
    assert isinstance(union, FeatureUnion)
    (_, colour), (name, gray) = union.transformer_list
    assert isinstance(colour, SMT) and isinstance(gray, GrayView) and name == "smt1_p3_t0.3_gray"
    # the gray member is the model its size alone fits: seed 0, its own checkpoint
    assert (gray.estimator.random_state, gray.estimator.checkpoint_path, gray.estimator.normalize_output) == (0, ckpt + ".1", True)
    z = np.vstack(list(_knn.fit_transform_chunks(union, x, 25)))
    luma = to_grayscale(x)[..., 0]
    assert luma.shape == (60, 12, 12) and np.array_equal(luma[0], np.rint(x[0] @ [0.299, 0.587, 0.114]))
    by_hand = SMT(**{**gray.estimator.get_params(), "checkpoint_path": None}).fit_transform(luma)
    np.testing.assert_allclose(z[:, colour.n_features_out_:], by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_knn.transform_chunks(union, x, 25), z, rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit, match=r"--view \(3\) must have one value or the same number"):
        _knn.build_model(ap.parse_args(["--patch-size", "3", "4", "--view", "color", "gray", "gray"]))
    with pytest.raises(SystemExit, match="no --view gray"):
        _knn.build_model(ap.parse_args(["--view", "gray", "--second-layer"]))
    assert isinstance(_knn.build_model(ap.parse_args(["--view", "gray"])), GrayView)

    def load(root, split):
        return (x, y) if split == "train" else (x[:20], y[:20])
    acc = _knn.run(ap.parse_args(["--patch-size", "3", "--view", "color", "gray", "--pool-size", "3",
                                  "--pool-stride", "3", "--json", str(tmp_path / "r.jsonl")]), load, "made-up", "-")
    assert 0 <= acc["top1"] <= 100
    row = json.loads((tmp_path / "r.jsonl").read_text())
    assert row["n_features_out"] == 2 * 3 * 3 * 4 and len(row["fit_stats"]) == 2
    assert "views ['color', 'gray']" in capsys.readouterr().out


_HUB_MODEL = dict(n_atoms=16, n_components=4, dict_epochs=0, precision="float32")


def _hub_case(seed, n_train, n_test):
    """Random 12x12 RGB training and test images, labels ``i % 3``, and a ``load`` for ``_knn.run``."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n_train, 12, 12, 3)) * 255).astype(np.uint8)
    x_test = (rng.random((n_test, 12, 12, 3)) * 255).astype(np.uint8)
    y = np.arange(n_train) % 3

    def load(root, split):
        return (x, y) if split == "train" else (x_test, y[:n_test])
    return x, x_test, y, load


def _csls_by_hand(args, x, x_test, y):
    """The benchmark's model fitted on ``x`` and its mirrors: float64 unit embeddings of those (with
    their labels) and of ``x_test``, the probes (the last 10 % of the originals), their cosines to
    every training embedding (a probe's own image and mirror at -inf) and each training embedding's
    density, the mean of its 10 best cosines to the probes."""
    import _knn
    from smt import SMT
    n = len(x)
    xm = np.concatenate([x, x[:, :, ::-1]])
    model = SMT(**_knn.smt_params(args)).fit(xm)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    train, test = unit(model.transform(xm).astype(np.float64)), unit(model.transform(x_test).astype(np.float64))
    probes = np.arange(n - n // 10, n)
    cos = train[probes] @ train.T
    cos[np.arange(len(probes)), probes] = cos[np.arange(len(probes)), probes + n] = -np.inf
    density = np.array([np.sort(c[np.isfinite(c)])[-10:].mean() for c in cos.T])
    return train, test, np.concatenate([y, y]), probes, cos, density


def _weighted_top1(sims, labels, truth, k, t):
    """Top-1 (%) of the weighted kNN of similarity rows ``sims``: top ``k`` by ``sims``, votes exp(s / t)."""
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    w = np.exp((np.take_along_axis(sims, top, 1) - sims.max(1, keepdims=True)) / t)
    votes = np.stack([(w * (labels[top] == c)).sum(1) for c in range(3)], 1)
    return 100 * np.mean(votes.argmax(1) == truth)


def test_hub_penalty_is_csls_with_the_validation_images_as_probes(capsys):
    """--hub-penalty BETA: the benchmark's top-1 is the kNN of s_ij - BETA * r_j, with r_j the mean
    of training image j's 10 best cosines to the probes (the last 10 % of the originals), a probe's
    own image and its mirror left out; BETA 0 is the plain protocol."""
    import _knn
    x, x_test, y, load = _hub_case(0, 60, 40)
    opts = ["--patch-size", "3", "--pool-size", "3", "--pool-stride", "3", "--flips", "--chunk-size", "25",
            "--knn-precision", "float32", "--k", "5"]
    ap = _knn.parser("", **_HUB_MODEL)
    plain = _knn.run(ap.parse_args(opts), load, "made-up", "-")
    assert _knn.run(ap.parse_args(opts + ["--hub-penalty", "0"]), load, "made-up", "-") == plain
    capsys.readouterr()
    hub = _knn.run(ap.parse_args(opts + ["--hub-penalty", "0.7"]), load, "made-up", "-")
    assert "hub-reduced kNN at beta 0.7: not the paper's protocol" in capsys.readouterr().out

    # by hand, from the same model's embeddings; 6 probes: k = 10 takes every probe left (5 for a
    # probe's own image and its mirror)
    train, test, ym, _, _, density = _csls_by_hand(ap.parse_args(opts), x, x_test, y)
    assert hub["top1"] == pytest.approx(_weighted_top1(test @ train.T - 0.7 * density, ym, y[:40], 5, 0.03))
    assert hub["top1"] != plain["top1"] or hub["top5"] != plain["top5"]


def test_several_hub_penalties_choose_beta_k_and_temperature_on_the_validation_split(capsys, tmp_path):
    """--hub-penalty 0 0.7: each beta's test top-1 is the single-beta run's, and (beta, k, T) is the
    best of the grid on the validation split (the last 10 % of the originals as queries against the
    other images and their mirrors; ties: smaller beta, k, larger T), computed here by hand."""
    import _knn
    x, x_test, y, load = _hub_case(1, 80, 30)
    opts = ["--patch-size", "3", "--pool-size", "3", "--pool-stride", "3", "--flips", "--chunk-size", "35",
            "--knn-precision", "float32", "--k", "5", "--k-grid", "1", "3", "7", "--t-grid", "0.03", "0.3"]
    ap = _knn.parser("", **_HUB_MODEL)
    plain = _knn.run(ap.parse_args(opts), load, "made-up", "-")
    single = _knn.run(ap.parse_args(opts + ["--hub-penalty", "0.7"]), load, "made-up", "-")
    capsys.readouterr()
    both = _knn.run(ap.parse_args(opts + ["--hub-penalty", "0", "0.7", "--json", str(tmp_path / "r.jsonl")]),
                    load, "made-up", "-")
    out = capsys.readouterr().out
    # the test kNNs keep max(--k-grid) = 7 neighbours; the result line still votes with --k 5
    assert both["top1"] == plain["top1"] and both["top5"] == plain["top5"]
    h = both["hub_penalty"]
    assert h["betas"] == [0.0, 0.7] and h["top1"] == [plain["top1"], single["top1"]]
    assert "hub penalty beta (0: the paper's kNN)" in out and f"test top-1 {h['top1_chosen']:.2f}" in out
    assert json.loads((tmp_path / "r.jsonl").read_text())["hub_penalty"] == h

    train, test, ym, probes, cos, density = _csls_by_hand(ap.parse_args(opts), x, x_test, y)
    refs = np.setdiff1d(np.arange(160), np.concatenate([probes, probes + 80]))
    val = {(b, k, t): _weighted_top1(cos[:, refs] - b * density[refs], ym[refs], y[probes], k, t)
           for b in (0.0, 0.7) for k in (1, 3, 7) for t in (0.03, 0.3)}
    assert h["val_top1"] == pytest.approx(
        [_weighted_top1(cos[:, refs] - b * density[refs], ym[refs], y[probes], 5, 0.03) for b in (0.0, 0.7)])
    (b, k, t), best = max(val.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1], kv[0][2]))
    assert h["chosen"] == [b, k, t] and h["val_chosen"] == pytest.approx(best)
    assert h["top1_chosen"] == pytest.approx(_weighted_top1(test @ train.T - b * density, ym, y[:30], k, t))


def test_hub_penalty_refuses_a_negative_or_non_numeric_beta(capsys):
    import _knn
    with pytest.raises(SystemExit):
        _knn.parser("").parse_args(["--hub-penalty", "-1"])
    assert "-1.0 is not at least 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _knn.parser("").parse_args(["--hub-penalty", "strong"])
    assert "not a number: 'strong'" in capsys.readouterr().err


def test_member_weight_gives_each_member_its_norm_in_the_union(capsys):
    """--member-weight W_i: member i's block of the training chunks and of the test embedding has norm
    W_i (FeatureUnion's transformer_weights), so its cosine counts W_i^2 / sum W^2; one value is
    shared, a wrong count, a single model or a weight <= 0 is refused by name."""
    import _knn
    x, _, _, _ = _hub_case(2, 30, 10)
    ap = _knn.parser("", **_HUB_MODEL)
    args = ap.parse_args(["--patch-size", "3", "4", "--pool-size", "3", "--pool-stride", "3",
                          "--member-weight", "0.5", "2"])
    union = _knn.build_model(args)
    assert union.transformer_weights == {"smt0_p3_t0.3": 0.5, "smt1_p4_t0.3": 2.0}
    train = np.vstack(list(_knn.fit_transform_chunks(union, x, 16)))
    test = _knn.transform_chunks(union, x, 16)
    width = union.transformer_list[0][1].n_features_out_
    for z in (train, test):
        np.testing.assert_allclose(np.linalg.norm(z[:, :width], axis=1), 0.5, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(z[:, width:], axis=1), 2.0, rtol=1e-5)
    np.testing.assert_allclose(train, test, rtol=1e-5, atol=1e-6)
    assert _knn.member_weights(ap.parse_args(["--patch-size", "3", "4", "--member-weight", "3"])) == [3.0, 3.0]
    assert _knn.build_model(ap.parse_args(["--patch-size", "3", "4"])).transformer_weights is None
    with pytest.raises(SystemExit, match="must have one value or the same number"):
        _knn.build_model(ap.parse_args(["--patch-size", "3", "4", "--member-weight", "1", "2", "3"]))
    with pytest.raises(SystemExit, match="weighs the members of a union"):
        _knn.build_model(ap.parse_args(["--patch-size", "3", "--member-weight", "2"]))
    with pytest.raises(SystemExit):
        ap.parse_args(["--member-weight", "0"])
    assert "--member-weight" in capsys.readouterr().err


def test_weight_grid_is_the_simplex_and_every_subset_at_equal_shares():
    import knn_member_weights as kmw
    grid = kmw.weight_grid(3, 0.5)
    # the simplex at step 0.5 (6 points, among them every pair at equal shares) and the three at 1/3 each
    assert grid.shape == (7, 3)
    np.testing.assert_allclose(grid.sum(1), 1)
    rows = {tuple(np.round(r, 3)) for r in grid}
    assert {(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5), (0.333, 0.333, 0.333)} == rows
    assert len(kmw.weight_grid(2, 0.1)) == 11
    with pytest.raises(SystemExit, match="1 / n"):
        kmw.weight_grid(2, 0.3)


def test_weighted_top1_is_the_knn_of_the_shares_weighted_cosine():
    import knn_member_weights as kmw
    rng = np.random.default_rng(3)
    s1, s2 = rng.uniform(-1, 1, (2, 40, 90)).astype(np.float32)
    labels, truth = rng.integers(0, 3, 90), rng.integers(0, 3, 40)
    shares = np.array([[1.0, 0.0], [0.3, 0.7], [0.0, 1.0]])
    got = kmw.weighted_top1([s1, s2], shares, labels, truth, k=7, temperature=0.05, row_chunk=13)
    want = [_weighted_top1(a * s1 + b * s2, labels, truth, 7, 0.05) for a, b in shares]
    np.testing.assert_allclose(got, want)
    cols = np.arange(0, 90, 2)
    got = kmw.weighted_top1([s1, s2], shares[1:2], labels[cols], truth, k=5, temperature=0.05, columns=cols)
    assert got[0] == pytest.approx(_weighted_top1(0.3 * s1[:, cols] + 0.7 * s2[:, cols], labels[cols], truth, 5, 0.05))
    # by hand: one query, two references; member 1 prefers reference 0 (class 0), member 2 reference 1 (class 1)
    a, b = np.array([[0.9, 0.1]], np.float32), np.array([[0.0, 0.8]], np.float32)
    one = kmw.weighted_top1([a, b], np.array([[0.7, 0.3], [0.3, 0.7]]), np.array([0, 1]), np.array([0]), 1, 0.03)
    np.testing.assert_allclose(one, [100.0, 0.0])  # 0.63 > 0.31, then 0.27 < 0.59


def test_member_weights_benchmark_matches_the_knn_benchmark(tmp_path, capsys):
    """Every grid row is the benchmark's kNN of that weighting: equal shares give ``_knn.run``'s
    top-1 of the union, the chosen row ``_knn.run`` with the printed ``--member-weight``, and the
    choice is the best validation top-1."""
    import _knn
    import knn_member_weights as kmw
    _, _, _, load = _hub_case(4, 70, 40)
    opts = ["--patch-size", "3", "4", "--pool-size", "3", "--pool-stride", "3", "--flips", "--chunk-size", "30",
            "--knn-precision", "float32", "--k", "5", "--n-atoms", "16", "--n-components", "4", "--precision", "float32"]
    got = kmw.run(kmw.build_parser().parse_args(opts + ["--step", "0.25", "--sims", str(tmp_path / "sims"),
                                                        "--json", str(tmp_path / "w.jsonl")]), load)
    out = capsys.readouterr().out
    grid, test, val = got["shares"], got["test_top1"], got["val_top1"]
    assert len(grid) == 5 and sorted((tmp_path / "sims").iterdir())[0].name == "smt0_p3_t0.3.npy"
    assert val[got["chosen"]] == val.max() and "<- chosen on validation" in out
    even = int(np.flatnonzero(np.all(grid == 0.5, axis=1))[0])
    ap = kmw.build_parser()
    assert test[even] == _knn.run(ap.parse_args(opts), load, "made-up", "-")["top1"]
    w = json.loads((tmp_path / "w.jsonl").read_text())["member_weight"]
    weighted = _knn.run(ap.parse_args(opts + ["--member-weight", *map(str, w)]), load, "made-up", "-")
    assert weighted["top1"] == test[got["chosen"]]
    with pytest.raises(SystemExit, match="two or more members"):
        kmw.run(ap.parse_args(["--patch-size", "3"]), load)
