"""Data sets by name: `fashion-mnist[:DIR]`, `digits`, `imagefolder:PATH`, `cifar10:PATH`.

Small grayscale sets live in memory as uint8 tensors and are batched without a DataLoader
(batch-level augmentation is far faster than per-sample transforms on a 2-core CPU); folder data
sets use torchvision's loaders. Nothing here downloads anything unless the user's data is missing
and `download=True` (the Fashion-MNIST fallback for machines with a network).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ChanpruneError

__all__ = ["DataBundle", "Split", "load_data", "missing_data_message", "FASHION_MNIST_DIRS"]

# Where the Debian package `dataset-fashion-mnist` installs its IDX files (`dpkg -L dataset-fashion-mnist`).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
GET_FASHION_MNIST = ("install the Debian package (`sudo apt-get install dataset-fashion-mnist`, or `make data`), "
                     "or pass --data fashion-mnist:DIR with the four IDX files inside")
DATA_SETS = ("fashion-mnist[:DIR] (real, 70k images), digits (scikit-learn's 8x8 digits, bundled), "
             "imagefolder:PATH (train/ and val/ inside), cifar10:PATH")


def missing_data_message() -> str:
    """What to say when no data set was named."""
    return f"--data is needed: one of {DATA_SETS}. To get Fashion-MNIST, {GET_FASHION_MNIST}"


class DataError(ChanpruneError, ValueError):
    """Missing, empty or unreadable data."""


@dataclass
class Split:
    """An in-memory split: uint8 images (N, C, H, W) and int64 labels, batched by `batches`."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: float
    std: float
    channels: int
    size: int | None
    augment: bool = False

    def __len__(self) -> int:
        return self.labels.numel()

    def prepare(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        x = (x.float() / 255.0 - self.mean) / self.std
        if self.augment:  # random shifts (pad + crop) and horizontal flips, per example
            n, _, h, w = x.shape
            pad = max(1, h // 8)
            x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
            dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
            dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
            rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
            x = torch.gather(x, 2, rows)
            cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
            x = torch.gather(x, 3, cols)
            flip = torch.rand(n, generator=generator) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        return x.contiguous()

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0, skip: int = 0,
                rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in a reproducible order (seed, epoch): a resumed run skips the `skip` batches it
        already saw; under DDP each rank takes every `world`-th example."""
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(len(self), generator=g) if shuffle else torch.arange(len(self))
        order = order[rank::world]
        if shuffle and world > 1:  # every rank runs the same number of steps
            order = order[: len(self) // world]
        for i, start in enumerate(range(0, order.numel(), batch_size)):
            if i < skip:
                continue
            idx = order[start:start + batch_size]
            yield self.prepare(self.images[idx], generator=g), self.labels[idx]

    def num_batches(self, batch_size: int, world: int = 1) -> int:
        n = len(self) // world if world > 1 else len(self)
        return (n + batch_size - 1) // batch_size


@dataclass
class DataBundle:
    name: str
    num_classes: int
    in_channels: int  # the data's own channels
    image_size: int  # the data's own size
    train: Split
    val: Split
    test: Split | None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} values)")
    return body.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        for cand in (folder / name, folder / "raw" / name, folder / "FashionMNIST" / "raw" / name):
            if cand.is_file():
                return cand
    raise DataError(f"{folder}: no {stem}[.gz]")


def _fashion_mnist(folder: str | None, download: bool) -> tuple[np.ndarray, ...]:
    folders = [Path(folder)] if folder else [Path(d) for d in FASHION_MNIST_DIRS]
    for d in folders:
        if d.is_dir():
            return tuple(_read_idx(_find_idx(d, s)) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    if folder:
        raise DataError(f"fashion-mnist:{folder}: no such folder")
    if download:
        import torchvision

        root = Path(os.path.expanduser("~/.cache/chanprune"))
        tr = torchvision.datasets.FashionMNIST(root, train=True, download=True)
        te = torchvision.datasets.FashionMNIST(root, train=False, download=True)
        return tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy()
    raise DataError(f"Fashion-MNIST not found: {GET_FASHION_MNIST}")


def _split_val(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y.numel(), generator=g)
    n_val = max(1, int(round(fraction * y.numel())))
    return (x[perm[n_val:]], y[perm[n_val:]]), (x[perm[:n_val]], y[perm[:n_val]])


def load_data(spec: str, *, channels: int | None = None, size: int | None = None, val_fraction: float = 0.1,
              seed: int = 0, augment: bool = True, download: bool = False, limit: int | None = None) -> DataBundle:
    """Load a data set by name.

    Args:
        spec: `fashion-mnist`, `fashion-mnist:DIR`, `digits`, `imagefolder:PATH` or `cifar10:PATH`.
        channels: channels the model expects (grayscale is repeated to 3; colour is averaged to 1).
        size: resize images to this square size (e.g. 64 for ImageNet-shaped models).
        val_fraction: share of the training data held out for validation.
        limit: keep only the first `limit` training examples (quick runs).
    """
    name, _, arg = spec.partition(":")
    if name == "fashion-mnist":
        xtr, ytr, xte, yte = _fashion_mnist(arg or None, download)
        xtr, xte = torch.from_numpy(xtr.copy()).unsqueeze(1), torch.from_numpy(xte.copy()).unsqueeze(1)
        ytr, yte = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
        mean, std, classes, native = 0.2860, 0.3530, 10, 28
    elif name == "digits":
        if arg:
            raise DataError("digits takes no path: it is scikit-learn's bundled 8x8 digits")
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
        y = torch.from_numpy(d.target.astype(np.int64))
        (xtr, ytr), (xte, yte) = _split_val(x, y, 0.2, seed=1234)  # digits has no test split: hold 20% out
        mean, std, classes, native = 0.30, 0.37, 10, 8
    elif name in ("imagefolder", "cifar10"):
        xtr, ytr, xte, yte, classes, native = _folder_data(name, arg)
        mean, std = 0.45, 0.25
    else:
        raise DataError(f"unknown data set {spec!r}; choose one of: fashion-mnist[:DIR], digits, imagefolder:PATH, cifar10:PATH")
    if limit:
        xtr, ytr = xtr[:limit], ytr[:limit]
    (xtr, ytr), (xva, yva) = _split_val(xtr, ytr, val_fraction, seed)
    ch = channels or xtr.shape[1]
    mk = lambda x, y, aug: Split(x, y, mean, std, ch, size, aug)  # noqa: E731
    return DataBundle(name, classes, xtr.shape[1], native, mk(xtr, ytr, augment), mk(xva, yva, False),
                      mk(xte, yte, False) if xte is not None else None)


def _folder_data(name: str, path: str):
    """imagefolder (train/ and val/ inside) or cifar10 (torchvision's format), loaded into memory."""
    import torchvision

    if not path:
        raise DataError(f"{name} needs a path: --data {name}:PATH")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{name}:{path}: no such folder")
    if name == "cifar10":
        try:
            tr = torchvision.datasets.CIFAR10(str(root), train=True, download=False)
            te = torchvision.datasets.CIFAR10(str(root), train=False, download=False)
        except RuntimeError as e:
            raise DataError(f"cifar10:{path}: {e}") from e
        to = lambda d: (torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(d.targets))  # noqa: E731
        (xtr, ytr), (xte, yte) = to(tr), to(te)
        return xtr, ytr, xte, yte, 10, 32
    splits = {}
    for sub in ("train", "val"):
        folder = root / sub
        if not folder.is_dir():
            raise DataError(f"imagefolder:{path}: needs train/ and val/ folders inside")
        try:
            ds = torchvision.datasets.ImageFolder(str(folder))
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"imagefolder:{path}/{sub}: {e}") from e
        splits[sub] = ds
    classes = len(splits["train"].classes)
    size = 64
    tf = torchvision.transforms.Compose([torchvision.transforms.Resize(size), torchvision.transforms.CenterCrop(size),
                                         torchvision.transforms.PILToTensor()])
    out = []
    for sub in ("train", "val"):
        ds = splits[sub]
        xs = torch.stack([tf(ds.loader(p).convert("RGB")) for p, _ in ds.samples])
        ys = torch.tensor([t for _, t in ds.samples], dtype=torch.long)
        out += [xs, ys]
    return out[0], out[1], out[2], out[3], classes, size
