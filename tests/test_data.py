import gzip

import numpy as np
import pytest
import torch

from chanprune.data import DataError, load_data


def test_digits_splits_and_shapes():
    d = load_data("digits", channels=3, size=16)
    assert d.num_classes == 10 and d.image_size == 8
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    x, y = next(d.train.batches(32, shuffle=True))
    assert x.shape == (32, 3, 16, 16) and y.dtype == torch.long
    assert torch.equal(x[:, 0], x[:, 1])  # grayscale repeated to 3 channels


def test_batches_are_reproducible_and_skippable():
    d = load_data("digits")
    a = [y for _, y in d.train.batches(100, shuffle=True, seed=3, epoch=2)]
    b = [y for _, y in d.train.batches(100, shuffle=True, seed=3, epoch=2, skip=4)]
    assert all(torch.equal(u, v) for u, v in zip(a[4:], b))
    c = [y for _, y in d.train.batches(100, shuffle=True, seed=3, epoch=3)]
    assert not torch.equal(a[0], c[0])


def test_ddp_ranks_see_disjoint_examples():
    d = load_data("digits", augment=False)
    r0 = torch.cat([y for _, y in d.train.batches(50, shuffle=True, rank=0, world=2)])
    r1 = torch.cat([y for _, y in d.train.batches(50, shuffle=True, rank=1, world=2)])
    assert r0.numel() == r1.numel() == len(d.train) // 2


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_from_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (50, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, (50,)))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (20,)))
    d = load_data(f"fashion-mnist:{tmp_path}")
    assert len(d.train) + len(d.val) == 50 and len(d.test) == 20


def test_truncated_idx_is_a_clear_error(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))
    raw = gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:100])
    for n in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        _write_idx(tmp_path / n, np.zeros((5,)))
    with pytest.raises(DataError, match="truncated"):
        load_data(f"fashion-mnist:{tmp_path}")


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    d = load_data(f"imagefolder:{tmp_path}", size=32)
    assert d.num_classes == 2 and len(d.test) == 6
    x, _ = next(d.test.batches(6))
    assert x.shape == (6, 3, 32, 32)


@pytest.mark.parametrize("spec,needle", [
    ("nope", "unknown data set"), ("imagefolder:/no/such/dir", "no such folder"), ("imagefolder", "needs a path"),
    ("cifar10:/no/such/dir", "no such folder"), ("digits:/x", "takes no path"),
    ("fashion-mnist:/no/such/dir", "no such folder"),
])
def test_bad_data_specs(spec, needle):
    with pytest.raises(DataError, match=needle):
        load_data(spec)


def test_empty_imagefolder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError):
        load_data(f"imagefolder:{tmp_path}")
