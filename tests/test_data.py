"""Tests of ``ecar.data``: digits, shapes, imagefolder, fashion-mnist and ``build_dataset``."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecar.data import DataError, ImageDataset, build_dataset
from ecar.data.imagefolder import load_image
from ecar.data.shapes import SHAPE_NAMES, ShapesDataset, shape_coverage

# ----------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_sizes():
    tr = build_dataset("digits")
    he = build_dataset("digits", split="heldout")
    assert isinstance(tr, ImageDataset)
    assert (len(tr), len(he)) == (1497, 300)
    assert (tr.num_classes, tr.channels, tr.resolution) == (10, 1, 16)
    assert tr.class_names == [str(i) for i in range(10)]
    x, y = tr[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    xs = torch.stack([tr[i][0] for i in range(len(tr))])
    assert xs.min() >= -1.0 and xs.max() <= 1.0
    assert xs.min() == -1.0 and xs.max() > 0.9  # the full range is used


def test_digits_split_disjoint_stratified_and_seed_independent():
    tr = build_dataset("digits", seed=0)
    he = build_dataset("digits", split="heldout", seed=123)
    assert not set(tr.indices) & set(he.indices)
    assert sorted(set(tr.indices) | set(he.indices)) == list(range(1797))
    assert np.bincount(he.labels.numpy(), minlength=10).tolist() == [30] * 10
    assert (np.bincount(tr.labels.numpy(), minlength=10) > 100).all()
    he0 = build_dataset("digits", split="heldout", seed=0)
    assert np.array_equal(he.indices, he0.indices)
    assert he.fingerprint() == he0.fingerprint()


def test_digits_native_resolution_matches_sklearn_and_is_deterministic():
    from sklearn.datasets import load_digits

    raw = load_digits()
    d8 = build_dataset("digits", resolution=8, split="heldout")
    for k in (0, 7, 299):
        x, y = d8[k]
        i = d8.indices[k]
        assert y == raw.target[i]
        expected = torch.from_numpy(raw.images[i].astype(np.float32)) / 8 - 1
        assert torch.allclose(x[0], expected, atol=1e-6)
    a, b = build_dataset("digits"), build_dataset("digits")
    assert all(torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] for i in (0, 5, 1000))
    a[0][0].fill_(7.0)  # items are copies: mutating one must not corrupt the cache
    assert build_dataset("digits")[0][0].max() <= 1.0


def test_digits_resolution_channels_and_fingerprints():
    d4 = build_dataset("digits", resolution=4)
    d28 = build_dataset("digits", resolution=28)
    assert d4[0][0].shape == (1, 4, 4) and d28[0][0].shape == (1, 28, 28)
    assert d4[0][0].abs().max() <= 1.0
    rgb = build_dataset("digits", channels=3)
    x = rgb[3][0]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    fps = {
        build_dataset("digits").fingerprint(),
        build_dataset("digits", split="heldout").fingerprint(),
        d4.fingerprint(),
        d28.fingerprint(),
        rgb.fingerprint(),
    }
    assert len(fps) == 5
    assert build_dataset("digits").fingerprint() == build_dataset("digits").fingerprint()
    u8 = rgb.images_uint8(10)
    assert u8.shape == (10, 16, 16, 3) and u8.dtype == np.uint8
    assert u8.max() > 200 and u8.min() == 0


# ----------------------------------------------------------------------------- shapes


def test_shapes_deterministic_across_instances_and_access_order():
    a = build_dataset("shapes", shapes_size=1000)
    b = build_dataset("shapes", shapes_size=1000)
    order = [999, 3, 500, 0, 3]
    xa = [a[i] for i in order]
    xb = [b[i] for i in reversed(order)][::-1]
    for (x1, y1), (x2, y2) in zip(xa, xb):
        assert torch.equal(x1, x2) and y1 == y2
    assert torch.equal(a[-1][0], a[999][0])
    with pytest.raises(IndexError):
        a[1000]
    assert a.fingerprint() == b.fingerprint()


def test_shapes_labels_range_lengths_and_splits():
    d = build_dataset("shapes", shapes_size=100)
    assert (len(d), d.num_classes, d.channels, d.resolution) == (100, len(SHAPE_NAMES), 3, 32)
    assert len(SHAPE_NAMES) >= 6 and d.class_names == SHAPE_NAMES
    items = [d[i] for i in range(48)]
    assert [y for _, y in items] == [i % d.num_classes for i in range(48)]
    xs = torch.stack([x for x, _ in items])
    assert xs.shape == (48, 3, 32, 32) and xs.dtype == torch.float32
    assert xs.min() >= -1.0 and xs.max() <= 1.0
    assert (xs.amax(dim=(1, 2, 3)) - xs.amin(dim=(1, 2, 3)) > 0.3).all()  # shape visible
    he = build_dataset("shapes", split="heldout", shapes_size=100)
    assert len(he) == 100 and len(build_dataset("shapes", split="heldout")) == 5000
    assert not torch.equal(he[0][0], d[0][0])  # different seed stream
    assert he.fingerprint() != d.fingerprint()
    grey = build_dataset("shapes", channels=1, resolution=48, shapes_size=100)
    g = grey[5][0]
    assert g.shape == (1, 48, 48) and g.max() - g.min() > 0.3  # still contrasted in grey
    assert grey.fingerprint() != d.fingerprint()


def test_shapes_seeds_differ():
    a = build_dataset("shapes", seed=0, shapes_size=50)
    b = build_dataset("shapes", seed=1, shapes_size=50)
    assert all(not torch.equal(a[i][0], b[i][0]) for i in range(16))
    assert a.fingerprint() != b.fingerprint()
    assert [a[i][1] for i in range(16)] == [b[i][1] for i in range(16)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / np.maximum(a, b).sum())


def test_shape_classes_are_distinct_and_antialiased():
    masks = [shape_coverage(k, 32, 16.0, 16.0, 11.0) for k in range(len(SHAPE_NAMES))]
    for k, m in enumerate(masks):
        assert m.min() == 0.0 and m.max() == 1.0
        assert ((m > 0.05) & (m < 0.95)).any(), SHAPE_NAMES[k]  # soft edges
        assert m.sum() > 20, SHAPE_NAMES[k]
        for j in range(k):
            assert _iou(m, masks[j]) < 0.8, (SHAPE_NAMES[k], SHAPE_NAMES[j])


def test_shapes_images_show_their_class():
    """The foreground of each rendered image matches its own class's mask best."""
    d = ShapesDataset(size=64)
    for i in range(32):
        x, y = d[i]
        img = x.numpy()
        bg = img[:, 0, 0]  # corners stay background (shapes keep a margin)
        diff = np.abs(img - bg[:, None, None]).max(0)
        assert diff.max() > 0.4  # contrast between shape and background
        fgmask = (diff > 0.5 * diff.max()).astype(np.float64)
        _, _, _, cx, cy, r = d._params(i)
        ious = [_iou(fgmask, shape_coverage(k, 32, cx, cy, r) > 0.5) for k in range(d.num_classes)]
        assert int(np.argmax(ious)) == y and ious[y] > 0.85, (i, SHAPE_NAMES[y], ious)


# ----------------------------------------------------------------------------- imagefolder


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "sub").mkdir(parents=True)
    # cats: RGB png (wide: black | white | black), grey jpeg, RGBA png, CMYK jpeg
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 5:35] = 255
    Image.fromarray(wide).save(root / "cats" / "a_wide.png")
    Image.fromarray(_noise(24, 24, 1)[:, :, 0], "L").save(root / "cats" / "b_grey.jpg")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :, 0] = 255
    rgba[:, 8:, 3] = 255  # left half fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(root / "cats" / "c_rgba.png")
    Image.new("RGB", (30, 30), (200, 40, 40)).convert("CMYK").save(root / "cats" / "d_cmyk.JPG")
    # dogs: palette png, 16-bit grey png, gif, bmp in a nested folder, plus 2 corrupt files
    Image.fromarray(_noise(20, 20, 2)).convert("P").save(root / "dogs" / "e_pal.png")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(root / "dogs" / "f16.png")
    Image.fromarray(_noise(18, 22, 3)).save(root / "dogs" / "g.gif")
    Image.fromarray(_noise(18, 22, 4)).save(root / "dogs" / "sub" / "h.bmp")
    (root / "dogs" / "x_bad.png").write_bytes(np.random.default_rng(5).bytes(500))
    Image.fromarray(_noise(64, 64, 6)).save(root / "dogs" / "y_trunc.png")
    data = (root / "dogs" / "y_trunc.png").read_bytes()
    (root / "dogs" / "y_trunc.png").write_bytes(data[: len(data) // 2])
    # ignored: non-image and hidden files
    (root / "dogs" / "notes.txt").write_text("not an image")
    Image.fromarray(_noise(8, 8, 7)).save(root / "dogs" / ".hidden.png")
    return root


def test_imagefolder_reads_valid_and_warns_once(folder: Path):
    with pytest.warns(UserWarning, match=r"skipped 2 of 10 files") as rec:
        ds = build_dataset(f"imagefolder:{folder}", resolution=16)
    assert len([w for w in rec if "imagefolder" in str(w.message)]) == 1
    assert "x_bad.png" in str(rec[0].message)
    assert ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert len(ds) == 8 and ds.labels.tolist() == [0] * 4 + [1] * 4
    assert [p.name for p in ds.files][4:] == ["e_pal.png", "f16.png", "g.gif", "h.bmp"]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and y == int(ds.labels[i])
    wide = ds[0][0]  # 40x20 -> 32x16 -> centre crop keeps the white middle only (no squash)
    assert wide.min() > 0.95
    rgba = ds[2][0]
    assert torch.allclose(rgba[:, :, :6], torch.ones(3, 16, 6), atol=0.02)  # transparent -> white
    assert rgba[1, :, 10:].max() < -0.9 and rgba[0, :, 10:].min() > 0.9  # opaque red
    cmyk = ds.images_uint8()[3].reshape(-1, 3).mean(0)
    assert np.abs(cmyk - [200, 40, 40]).max() < 25
    assert ds.images_uint8()[5].min() == 255  # 16-bit white stays white
    assert ds.images_uint8().shape == (8, 16, 16, 3)


def test_imagefolder_channels_heldout_and_fingerprint(folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grey = build_dataset(f"imagefolder:{folder}", resolution=12, channels=1)
        a = build_dataset(f"imagefolder:{folder}", resolution=16)
        b = build_dataset(f"imagefolder:{folder}", resolution=16)
        he = build_dataset(f"imagefolder:{folder}", resolution=16, split="heldout")
    assert grey[0][0].shape == (1, 12, 12) and grey.channels == 1
    assert he.labels.tolist() == [0, 1]
    assert [p.name for p in he.files] == ["a_wide.png", "e_pal.png"]
    assert a.fingerprint() == b.fingerprint()
    assert len({a.fingerprint(), grey.fingerprint(), he.fingerprint()}) == 3


def test_imagefolder_heldout_every_tenth_and_flat_layout(tmp_path: Path):
    for i in range(25):
        Image.fromarray(_noise(8, 8, i)).save(tmp_path / f"{i:02d}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped: no warning at all
        flat = build_dataset(f"imagefolder:{tmp_path}", resolution=8)
        he = build_dataset(f"imagefolder:{tmp_path}", resolution=8, split="heldout")
    assert flat.class_names == ["all"] and len(flat) == 25
    assert [p.name for p in he.files] == ["00.png", "10.png", "20.png"]
    assert np.array_equal(flat.images_uint8()[10], _noise(8, 8, 10))  # same size: exact pixels


def test_imagefolder_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(f"imagefolder:{tmp_path / 'nope'}", resolution=8)
    with pytest.raises(DataError, match="no image files"):
        build_dataset(f"imagefolder:{tmp_path}", resolution=8)
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no image files"):
        build_dataset(f"imagefolder:{tmp_path}", resolution=8)
    (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "a" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 2 image files"):
        build_dataset(f"imagefolder:{tmp_path}", resolution=8)
    with pytest.raises(DataError, match="data.resolution"):
        build_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(DataError, match="imagefolder:/path"):
        build_dataset("imagefolder:")
    with pytest.raises(DataError, match="channels must be 1"):
        build_dataset(f"imagefolder:{tmp_path}", resolution=8, channels=2)


def test_load_image_raises_on_corrupt(tmp_path: Path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(Exception):
        load_image(p, 8, 3)


# ----------------------------------------------------------------------------- build_dataset


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "mnist"}, "unknown dataset 'mnist'.*digits, shapes, fashion-mini, fashion-mnist.*imagefolder"),
        ({"name": ""}, "data.name"),
        ({"name": "digits", "split": "test"}, "unknown split 'test'.*train, heldout"),
        ({"name": "digits", "channels": 2}, "channels must be 1"),
        ({"name": "shapes", "resolution": 4}, "resolution must be an integer >= 8"),
        ({"name": "shapes", "shapes_size": 0}, "shapes_size"),
        ({"name": "shapes", "seed": -1}, "seed"),
    ],
)
def test_build_dataset_errors(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(DataError, match=match):
        build_dataset(name, **kwargs)
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- fashion-mnist
# Tests that read the real files skip (with the install hint) when the dataset is absent,
# and fail instead under ECAR_REQUIRE_DATASETS=1 (CI); see conftest.require_fashion_mnist.

import gzip  # noqa: E402

from ecar.data.fashion_mnist import CLASS_NAMES, ENV_VAR, read_idx  # noqa: E402

_FM_FILES = [
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
]


def _fm_source(directory: Path, stem: str) -> Path:
    return directory / stem if (directory / stem).is_file() else directory / f"{stem}.gz"


def _link_fm_files(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for stem in _FM_FILES:
        p = _fm_source(src, stem)
        (dst / p.name).symlink_to(p.resolve())
    return dst


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes (magic 0x0800 | ndim, big-endian dims)."""
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@pytest.fixture
def tiny_fm(tmp_path: Path) -> Path:
    """A synthetic, valid Fashion-MNIST directory: 20 train / 10 test images, raw + gzip."""
    rng = np.random.default_rng(0)
    d = tmp_path / "tiny-fm"
    d.mkdir()
    for prefix, n in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (d / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(images))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    return d


def test_fashion_mnist_sizes_range_padding_and_labels(fashion_mnist_dir):
    tr = build_dataset("fashion-mnist")
    he = build_dataset("fashion-mnist", split="heldout")
    assert isinstance(tr, ImageDataset)
    assert (len(tr), len(he)) == (60_000, 10_000)
    assert (tr.num_classes, tr.channels, tr.resolution) == (10, 1, 32)
    assert tr.class_names == CLASS_NAMES and CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"
    x, y = he[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    xs = torch.stack([he[i][0] for i in range(len(he))])
    torch.testing.assert_close(he.images(), xs, rtol=0, atol=0)  # batched == per item
    assert xs.min() == -1.0 and xs.max() == 1.0
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert bool((xs[:, :, border] == -1.0).all())  # the 2-px padding is exactly black
    # the interior is the raw file, 0..255 -> x/127.5 - 1, no resampling
    raw = read_idx(_fm_source(fashion_mnist_dir, "t10k-images-idx3-ubyte"), 0x803)
    expect = torch.from_numpy(raw.astype(np.float32)) / 127.5 - 1.0
    torch.testing.assert_close(xs[:, 0, 2:30, 2:30], expect, rtol=0, atol=1e-6)
    for ds in (tr, he):
        labels = ds.labels
        assert labels.min() >= 0 and labels.max() <= 9
        assert set(labels.tolist()) == set(range(10))
    assert he[len(he) - 1][1] == int(he.labels[-1]) and he[-1][1] == int(he.labels[-1])


def test_fashion_mnist_resolutions_channels_and_fingerprints(fashion_mnist_dir):
    he = build_dataset("fashion-mnist", split="heldout")
    tr = build_dataset("fashion-mnist", split="train")
    assert he.fingerprint() != tr.fingerprint()
    assert build_dataset("fashion-mnist", split="heldout").fingerprint() == he.fingerprint()
    native = build_dataset("fashion-mnist", split="heldout", resolution=28)
    torch.testing.assert_close(native[7][0], he[7][0][:, 2:30, 2:30], rtol=0, atol=0)
    small = build_dataset("fashion-mnist", split="heldout", resolution=16, channels=3)
    x = small[3][0]
    assert x.shape == (3, 16, 16) and x.min() >= -1.0 and x.max() <= 1.0
    torch.testing.assert_close(x[0], x[2])
    assert len({he.fingerprint(), native.fingerprint(), small.fingerprint()}) == 3
    assert small.images_uint8(4).shape == (4, 16, 16, 3)


def test_fashion_mnist_env_var_name_dir_and_uncompressed(fashion_mnist_dir, tmp_path, monkeypatch):
    ref = build_dataset("fashion-mnist", split="heldout")
    linked = _link_fm_files(fashion_mnist_dir, tmp_path / "linked")
    monkeypatch.setenv(ENV_VAR, str(linked))
    via_env = build_dataset("fashion-mnist", split="heldout")
    assert via_env.directory == linked and via_env.fingerprint() == ref.fingerprint()
    # data.name=fashion-mnist:DIR wins over the environment variable
    raw = tmp_path / "raw"
    raw.mkdir()
    for stem in _FM_FILES:
        src = _fm_source(fashion_mnist_dir, stem)
        data = gzip.decompress(src.read_bytes()) if src.suffix == ".gz" else src.read_bytes()
        (raw / stem).write_bytes(data)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    via_name = build_dataset(f"fashion-mnist:{raw}", split="heldout")
    assert via_name.directory == raw
    # uncompressed files hold the same content: same fingerprint, same pixels
    assert via_name.fingerprint() == ref.fingerprint()
    torch.testing.assert_close(via_name[123][0], ref[123][0], rtol=0, atol=0)


def test_fashion_mnist_missing_gives_one_error_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    for name in ("fashion-mnist", f"fashion-mnist:{tmp_path / 'also-absent'}"):
        with pytest.raises(DataError) as err:
            build_dataset(name)
        msg = str(err.value)
        assert "apt-get install dataset-fashion-mnist" in msg
        assert "github.com/zalandoresearch/fashion-mnist" in msg
        assert "ECAR_FASHION_MNIST=DIR" in msg and "data.name=fashion-mnist:DIR" in msg
        assert "absent" in msg
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError, match="lacks train-labels-idx1-ubyte"):
        build_dataset(f"fashion-mnist:{partial}")


def _bump_mtime(path: Path) -> None:
    """Make sure the rewrite is seen even on file systems with coarse mtimes."""
    import os

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_fashion_mnist_synthetic_files_gz_and_raw(tiny_fm):
    tr = build_dataset(f"fashion-mnist:{tiny_fm}")
    he = build_dataset(f"fashion-mnist:{tiny_fm}", split="heldout")
    assert (len(tr), len(he)) == (20, 10)
    assert [he[i][1] for i in range(10)] == list(range(10))
    raw = read_idx(tiny_fm / "t10k-images-idx3-ubyte", 0x803)
    torch.testing.assert_close(he[4][0][0, 2:30, 2:30], torch.from_numpy(raw[4].copy()).float() / 127.5 - 1)
    before = he.fingerprint()
    # new content (same size) -> new fingerprint
    images = raw.copy()
    images[0, 0, 0] ^= 1
    (tiny_fm / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    _bump_mtime(tiny_fm / "t10k-images-idx3-ubyte")
    assert build_dataset(f"fashion-mnist:{tiny_fm}", split="heldout").fingerprint() != before


@pytest.mark.parametrize("damage", ["truncated_raw", "truncated_gz", "wrong_magic", "count_mismatch"])
def test_fashion_mnist_corrupt_file_is_a_data_error_naming_it(tiny_fm, damage):
    img = tiny_fm / "t10k-images-idx3-ubyte"
    lab = tiny_fm / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncated_raw":
        bad, data = img, img.read_bytes()[:-100]
        bad.write_bytes(data)
    elif damage == "truncated_gz":
        bad, data = lab, lab.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "wrong_magic":
        bad = img
        bad.write_bytes(gzip.decompress(lab.read_bytes()))  # a labels file where images belong
    else:
        bad = lab
        bad.write_bytes(gzip.compress(_idx_bytes(np.zeros(9, np.uint8))))
    with pytest.raises(DataError, match=str(bad.name).replace(".", r"\.")):
        build_dataset(f"fashion-mnist:{tiny_fm}", split="heldout")
    # the other split is intact and still loads
    assert len(build_dataset(f"fashion-mnist:{tiny_fm}", split="train")) == 20


# --------------------------------------------------------------------------- fashion-mini


def test_fashion_mini_ships_balanced_splits_without_any_download(monkeypatch, tmp_path):
    # nothing outside the package is read: no Fashion-MNIST files anywhere it could look
    monkeypatch.setenv("ECAR_FASHION_MNIST", str(tmp_path / "nowhere"))
    tr, he = build_dataset("fashion-mini"), build_dataset("fashion-mini", split="heldout")
    assert (len(tr), len(he)) == (6_000, 2_000)
    assert tr.labels.bincount().tolist() == [600] * 10 and he.labels.bincount().tolist() == [200] * 10
    assert tr.class_names == CLASS_NAMES and (tr.channels, tr.resolution) == (1, 32)
    x = he.images()
    assert x.shape == (2_000, 1, 32, 32) and x.min() == -1.0 and x.max() == 1.0
    assert tr.fingerprint() != he.fingerprint() != build_dataset("fashion-mini", split="heldout", resolution=28).fingerprint()


def test_fashion_mini_is_the_official_images_at_its_recorded_indices(fashion_mnist_dir):
    from ecar.paths import assets_dir

    stored = np.load(assets_dir() / "fashion_mini.npz")
    for split in ("train", "heldout"):
        official = build_dataset("fashion-mnist", split=split, resolution=28)
        mini = build_dataset("fashion-mini", split=split, resolution=28)
        idx = torch.from_numpy(stored[f"{split}_index"].astype(np.int64))
        torch.testing.assert_close(mini.images(), official.images()[idx], rtol=0, atol=0)
        assert torch.equal(mini.labels, official.labels[idx])
        assert str(stored[f"{split}_source_sha256"]) == official._digest  # the provenance it records


def test_fashion_mini_damaged_asset_is_a_data_error_saying_reinstall(monkeypatch, tmp_path):
    import ecar.data.fashion_mini as fm
    import ecar.paths

    monkeypatch.setattr(fm, "_CACHE", {})
    monkeypatch.setattr(ecar.paths, "assets_dir", lambda: tmp_path)
    with pytest.raises(DataError, match="missing.*reinstall"):
        build_dataset("fashion-mini")
    (tmp_path / "fashion_mini.npz").write_bytes(b"PK\x03\x04 not a zip file")
    with pytest.raises(DataError, match="unreadable.*reinstall"):
        build_dataset("fashion-mini")
    np.savez(tmp_path / "fashion_mini.npz", train_images=np.zeros((3, 20, 20), np.uint8),
             train_labels=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="28×28"):
        build_dataset("fashion-mini")
