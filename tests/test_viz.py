"""smt.viz on tiny fitted models (matplotlib Agg backend)."""
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from smt import SMT  # noqa: E402
from smt.word_embedding import SMTWordEmbedding  # noqa: E402
from smt.viz import atom_images, plot_atoms, plot_neighbors, plot_spectrum, plot_word_map  # noqa: E402

SMALL = dict(patch_size=3, n_atoms=32, coding="one_sparse", n_components=6, context=1, pool_size=3,
             pool_stride=1, random_state=0, device="cpu")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    data = load_digits()
    return data.images[:200] / 16.0, data.target[:200]


@pytest.fixture(scope="module")
def gray_model(digits):
    return SMT(**SMALL).fit(digits[0])


@pytest.fixture(scope="module")
def color_model():
    images = np.random.default_rng(0).random((40, 8, 8, 3))
    return SMT(**SMALL).fit(images)


def test_atom_images_gray_and_color(gray_model, color_model):
    gray = atom_images(gray_model)
    assert gray.shape == (32, 3, 3)
    color = atom_images(color_model)
    assert color.shape == (32, 3, 3, 3)
    for patches in (gray, color):
        flat = patches.reshape(len(patches), -1)
        np.testing.assert_allclose(flat.min(axis=1), 0.0, atol=1e-12)
        np.testing.assert_allclose(flat.max(axis=1), 1.0, atol=1e-12)


def test_atom_images_channel_major(color_model):
    # atom 0 in pixel space, channel-major (c, i, j): its channel-1 block is the patch's channel 1
    pixels = (color_model.dictionary_ @ color_model.coloring_)[0]
    block = pixels.reshape(3, 3, 3)[1]
    got = atom_images(color_model)[0][..., 1]
    scaled = (block - pixels.min()) / (pixels.max() - pixels.min())
    np.testing.assert_allclose(got, scaled, atol=1e-6)


@pytest.mark.parametrize("order", ["usage", "index"])
def test_plot_atoms_gray(gray_model, order):
    fig = plot_atoms(gray_model, n=20, order=order)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    images = fig.axes[0].get_images()
    assert len(images) == 1
    # 20 atoms on a 5-column grid: 4 rows of 3x3 tiles with 1-pixel separators
    assert images[0].get_array().shape == (4 * 4 + 1, 5 * 4 + 1)


def test_plot_atoms_usage_order_first_tile(gray_model):
    fig = plot_atoms(gray_model, n=4, order="usage")
    mosaic = np.asarray(fig.axes[0].get_images()[0].get_array())
    best = int(np.argmax(gray_model.atom_usage_))
    np.testing.assert_allclose(mosaic[1:4, 1:4], atom_images(gray_model)[best])


def test_plot_atoms_color_and_existing_axes(color_model):
    fig, ax = plt.subplots()
    out = plot_atoms(color_model, n=9, ax=ax)
    assert out is fig
    images = ax.get_images()
    assert len(images) == 1
    assert images[0].get_array().shape == (3 * 4 + 1, 3 * 4 + 1, 3)


def test_plot_atoms_caps_n_and_checks_order(gray_model):
    fig = plot_atoms(gray_model, n=1000)
    assert fig.axes[0].get_images()[0].get_array().shape == (6 * 4 + 1, 6 * 4 + 1)  # 32 atoms, 6 columns
    with pytest.raises(ValueError, match="order"):
        plot_atoms(gray_model, order="random")


def test_plot_atoms_unfitted():
    with pytest.raises(ValueError, match="not fitted"):
        plot_atoms(SMT())


def test_plot_spectrum(gray_model):
    fig = plot_spectrum(gray_model)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    lines = fig.axes[0].get_lines()
    assert len(lines) == 1
    np.testing.assert_allclose(lines[0].get_ydata(), gray_model.eigenvalues_)


def test_plot_neighbors(gray_model, digits):
    images, labels = digits
    z = gray_model.transform(images)
    fig = plot_neighbors(images[:10], z[:10], images, z, n_neighbors=5, n_queries=3,
                         query_labels=labels[:10], reference_labels=labels)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * (1 + 5)
    assert all(len(ax.get_images()) == 1 for ax in fig.axes)
    # a query that is also a reference is its own nearest neighbour (cosine 1)
    assert fig.axes[1].get_title().endswith("1.00")
    np.testing.assert_array_equal(fig.axes[1].get_images()[0].get_array(), images[0])


def test_plot_neighbors_uint8_color_and_caps():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 5, 5, 3), dtype=np.uint8)
    emb = rng.standard_normal((7, 4))
    fig = plot_neighbors(images[:2], emb[:2], images, emb, n_neighbors=20, n_queries=6)
    assert len(fig.axes) == 2 * (1 + 7)  # capped at 2 queries and 7 references
    assert fig.axes[0].get_images()[0].get_array().shape == (5, 5, 3)


def test_plot_neighbors_checks_shapes():
    with pytest.raises(ValueError, match="same width"):
        plot_neighbors(np.zeros((2, 4, 4)), np.ones((2, 3)), np.zeros((2, 4, 4)), np.ones((2, 4)))


def test_missing_matplotlib_says_how_to_install(gray_model, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "sparse-manifold-transform\[viz\]"'):
        plot_spectrum(gray_model)


def test_import_does_not_load_matplotlib():
    import subprocess
    import sys
    code = "import sys, smt.viz; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_plot_word_map_labels_every_word():
    rng = np.random.default_rng(0)
    topics = [[f"a{c}" for c in "bcdefghijk"], [f"b{c}" for c in "bcdefghijk"]]
    lines = [" ".join(rng.choice(topics[i % 2], size=12)) for i in range(200)]
    model = SMTWordEmbedding(n_components=3, tokenizer="whitespace", random_state=0).fit(lines)
    fig = plot_word_map(model, n_words=20)
    assert isinstance(fig, Figure)
    labels = sorted(t.get_text() for t in fig.axes[0].texts)
    assert labels == sorted(model.vocabulary_)
    plt.close(fig)
    with pytest.raises(ValueError, match="at least 5 words"):
        plot_word_map(model, words=["ab", "ac"])
    with pytest.raises(KeyError, match="'zebra'"):
        plot_word_map(model, words=["ab", "ac", "ad", "ae", "zebra"])
