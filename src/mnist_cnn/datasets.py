"""MNIST-like datasets: a strict IDX reader, the data folder, the seed's splits, both data shapes.

Every dataset here has MNIST's layout: four IDX files (``.gz`` or raw), 60,000 training and
10,000 test images of 28×28 uint8 pixels, labels 0–9. Images stay uint8 tensors in memory;
callers scale them per batch (see :func:`to_float`).
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from .errors import DataError

if TYPE_CHECKING:
    from .download import Checksums

log = logging.getLogger(__name__)

IMAGE_SIZE = 28
NUM_CLASSES = 10
VALIDATION_SIZE = 5_000  # the seed's loader held out the first 5,000 training images
VALIDATION_SHARE = 12  # ... a twelfth of MNIST's 60,000: smaller training files keep that share


def validation_size(n_train: int) -> int:
    """How many of a training file's first images form the validation split: 5,000, as the
    seed's loader held out of MNIST's 60,000, or a twelfth of a smaller file (so a file of 6,000
    still trains on 5,500 rather than 1,000). 0 below 12 images."""
    return min(VALIDATION_SIZE, n_train // VALIDATION_SHARE)


SPLITS = ("train", "val", "test")

# IDX type byte -> numpy dtype (big-endian on disk). MNIST uses only 0x08, but the format has more.
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset comes from and how to check it (sources: docs/data-sources.md)."""

    name: str
    mirrors: tuple[str, ...]  # HTTPS only
    # SHA-256 of each file's *decompressed* bytes, keyed by the raw file name; None = not known.
    sha256: dict[str, str | None]
    classes: tuple[str, ...]
    # MD5 and SHA-256 of each published .gz file, keyed by the raw file name.
    gz_md5: dict[str, str] = field(default_factory=dict)
    gz_sha256: dict[str, str] = field(default_factory=dict)

    def checksums(self, raw: str) -> Checksums:
        """Every digest a download of ``raw``.gz must match."""
        from .download import Checksums  # urllib and ssl only when downloading

        return Checksums(self.sha256.get(raw), self.gz_sha256.get(raw), self.gz_md5.get(raw))


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        classes=tuple(str(d) for d in range(10)),
        gz_md5={
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        gz_sha256={
            "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        # The project's own copies first; then Keras's copy of the same files. (The S3 *website*
        # endpoint torchvision lists serves plain HTTP only.)
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        ),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        gz_md5={
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        gz_sha256={
            "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
    "kmnist": DatasetInfo(
        name="kmnist",
        mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        # No digest of the decompressed files is published: the .gz files' are, and are checked.
        sha256=dict.fromkeys(FILES.values()),
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        gz_md5={
            "train-images-idx3-ubyte": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte": "7320c461ea6c1c855c0b718fb2a4b134",
        },
        gz_sha256={
            "train-images-idx3-ubyte": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
            "train-labels-idx1-ubyte": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
            "t10k-images-idx3-ubyte": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
            "t10k-labels-idx1-ubyte": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
        },
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset by name, failing with the list of known names."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise DataError(f"unknown dataset {name!r}: choose one of {known}") from None


def default_data_root() -> Path:
    """``$MNIST_CNN_DATA`` if set, else the user's cache folder (``~/.cache/mnist-cnn``)."""
    env = os.environ.get("MNIST_CNN_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mnist-cnn"


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding one dataset's four files: ``<root>/<name>``."""
    dataset_info(name)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_root()
    return root / name


# --------------------------------------------------------------------------- IDX reading


# The most items an IDX file may declare: 200,000 images is over three times the largest
# training file of any dataset here (60,000), and 157 MB of pixels. The limit is checked against
# the header before the data is read or inflated, so a small gzip bomb cannot fill memory.
MAX_IDX_ITEMS = 200_000
MAX_IDX_BYTES = MAX_IDX_ITEMS * IMAGE_SIZE * IMAGE_SIZE


def _parse_header(data: bytes, source: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, dims, header length, data length in bytes) from an IDX file's first bytes."""
    if len(data) < 4:
        raise DataError(f"{source}: too short to be an IDX file ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number {data[:4].hex()})")
    type_code, ndim = data[2], data[3]
    dtype = _IDX_TYPES.get(type_code)
    if dtype is None:
        raise DataError(f"{source}: unknown IDX data type 0x{type_code:02x}")
    if not 1 <= ndim <= 4:
        raise DataError(f"{source}: IDX header claims {ndim} dimensions (expected 1 to 4)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = dtype.itemsize
    for d in dims:  # Python integers: a product of four 32-bit dimensions cannot overflow
        size *= d
    return dtype, dims, header, size


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array, checking magic number, dimensions and length."""
    dtype, dims, header, expected = _parse_header(data, source)
    found = len(data) - header
    if found < expected:
        raise DataError(
            f"{source}: truncated: header says {dims} needs {expected:,} bytes, found {found:,}"
        )
    if found > expected:
        raise DataError(
            f"{source}: {found - expected:,} unexpected bytes after the data for shape {dims}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _read_bounded(stream: BinaryIO, source: str, max_bytes: int) -> bytes:
    """An IDX file's bytes from ``stream``, reading no more than its header declares (+1 byte,
    to notice trailing data), after checking that declaration against ``max_bytes``."""
    head = stream.read(4)
    ndim = head[3] if len(head) == 4 else 0
    head += stream.read(4 * ndim) if 1 <= ndim <= 4 else b""
    dtype, dims, header, size = _parse_header(head, source)
    if size > max_bytes:
        raise DataError(
            f"{source}: header declares shape {dims} ({size:,} bytes); more than any "
            f"MNIST-like file (limit {max_bytes:,} bytes)"
        )
    return head + stream.read(size + 1)


def read_idx(path: str | os.PathLike[str], max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file, gzip-compressed (by its magic bytes) or raw, of at most ``max_bytes``
    of data; a compressed file is inflated as a bounded stream, never whole."""
    path = Path(path)
    try:
        if not path.is_file():
            if path.exists():
                raise DataError(f"{path}: not a regular file")
            raise DataError(f"{path}: file not found")
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
            fh.seek(0)
            if not gzipped:
                return parse_idx(_read_bounded(fh, str(path), max_bytes), str(path))
            with gzip.GzipFile(fileobj=fh) as gz:
                raw = _read_bounded(gz, str(path), max_bytes)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except EOFError:
        raise DataError(f"{path}: truncated gzip file; delete it and download again") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise DataError(
            f"{path}: corrupt gzip file ({err}); delete it and download again"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    return parse_idx(raw, str(path))


def find_file(folder: Path, raw_name: str) -> Path | None:
    """The file for ``raw_name`` in ``folder``: the ``.gz`` or the raw one, whichever exists."""
    for candidate in (folder / f"{raw_name}.gz", folder / raw_name):
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class Split:
    """One split held in memory: ``images`` uint8 (N, 28, 28), ``labels`` int64 (N,)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _check_pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lbl_path: Path) -> None:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise DataError(
            f"{img_path}: expected uint8 images of shape (N, 28, 28), found "
            f"{images.dtype} {images.shape}; is this an images file?"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{lbl_path}: expected a 1-D uint8 labels file, found {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{img_path} holds {len(images):,} images but {lbl_path} holds {len(labels):,} labels"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{lbl_path}: label {int(labels.max())} is outside 0-9")


def _load_pair(folder: Path, kind: str, name: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    if any(find_file(folder, FILES[f"{kind}-{part}"]) is None for part in ("images", "labels")):
        found = load_from_other_tools(name, folder.parent, kind)  # torchvision's, Keras' copy
        if found is not None:
            return found
    paths = []
    for part in ("images", "labels"):
        raw_name = FILES[f"{kind}-{part}"]
        path = find_file(folder, raw_name)
        if path is None:
            if not download:
                raise DataError(missing_message(name, folder))
            download_dataset(name, folder.parent)
            path = find_file(folder, raw_name)
            if path is None:  # the downloader raises on failure; this guards a changed layout
                raise DataError(missing_message(name, folder))
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    _check_pair(images, labels, paths[0], paths[1])
    if kind == "test" and len(images) == 0:  # else every evaluation reports "0/0"
        raise DataError(f"{folder}: the test files hold no images; nothing to evaluate on")
    return images, labels


def missing_message(name: str, folder: Path) -> str:
    """Where a dataset's files are expected, and how to get them there."""
    names = ", ".join(f"{n}.gz" for n in FILES.values())
    return (
        f"{name} not found in {folder}: run 'mnist-cnn download --dataset {name}', "
        f"or put {names} there by hand (or point --data-dir / $MNIST_CNN_DATA at their parent)"
    )


def download_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download a dataset's four files (verified, atomic) into ``<data_dir>/<name>``."""
    from .download import download_files  # only needed when files are missing

    info = dataset_info(name)
    folder = dataset_dir(name, data_dir)
    files = {f"{raw}.gz": info.checksums(raw) for raw in FILES.values()}
    mirrors = tuple(m for m in os.environ.get("MNIST_CNN_MIRRORS", "").split() if m) or info.mirrors
    download_files(files, mirrors, folder)
    return folder


@dataclass(frozen=True)
class MNISTLike:
    """A whole dataset in memory, split as the seed's loader split it."""

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        """``train``, ``val`` or ``test``."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}: choose one of {', '.join(SPLITS)}")
        return getattr(self, name)


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    full_train: bool = False,
    download: bool = True,
) -> MNISTLike:
    """Load a dataset: train 55,000 / val 5,000 (the first 5,000 of the training file) / test.

    A training file of fewer than 60,000 images keeps the same share: its first twelfth is the
    validation split (``validation_size``). With ``full_train`` the training split is the whole
    file and ``val`` still holds its first part (so validation numbers are then no longer held
    out; say so when you report them).
    """
    info = dataset_info(name)
    folder = dataset_dir(name, data_dir)
    train_x, train_y = _load_pair(folder, "train", name, download)
    test_x, test_y = _load_pair(folder, "test", name, download)
    n_val = validation_size(len(train_x))
    if n_val == 0:
        raise DataError(
            f"{folder}: only {len(train_x)} training images; need at least {VALIDATION_SHARE} "
            "(a twelfth of them is held out for validation)"
        )
    tx, ty = torch.from_numpy(train_x.copy()), torch.from_numpy(train_y.astype(np.int64))
    start = 0 if full_train else n_val
    return MNISTLike(
        name=name,
        classes=info.classes,
        train=Split("train", tx[start:].clone(), ty[start:].clone()),
        val=Split("val", tx[:n_val].clone(), ty[:n_val].clone()),
        test=Split(
            "test", torch.from_numpy(test_x.copy()), torch.from_numpy(test_y.astype(np.int64))
        ),
    )


# --------------------------------------------------------------------------- the seed's two shapes


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) -> float32 in [0, 1], as the seed's network was fed."""
    return images.to(torch.float32).div_(255.0)


def one_hot(labels: torch.Tensor | np.ndarray, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Integer labels -> float32 one-hot rows (Keras' ``to_categorical``)."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}")
    return torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)


def as_flat(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The seed's TensorFlow route: (N, 784) float32 in [0, 1] and (N, 10) one-hot labels."""
    x = to_float(split.images).reshape(len(split), IMAGE_SIZE * IMAGE_SIZE)
    return x.numpy(), one_hot(split.labels).numpy()


def as_keras(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The seed's Keras route: (N, 28, 28) uint8 and (N,) integer labels."""
    return split.images.numpy(), split.labels.numpy()


def load_test_split(
    name: str = "mnist", data_dir: str | os.PathLike[str] | None = None, *, download: bool = True
) -> Split:
    """Only the test split (10,000 images): half a second where the whole dataset takes more."""
    images, labels = _load_pair(dataset_dir(name, data_dir), "test", name, download)
    return Split("test", torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


# --------------------------------------------------------------------------- other tools' copies

# Where torchvision (``<root>/<Class>/raw/``) and Keras (``~/.keras/datasets/``) keep a dataset.
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
KERAS_NPZ = {"mnist": "mnist.npz"}  # Keras keeps MNIST as one .npz of four arrays
KERAS_FOLDERS = {"fashion-mnist": "fashion-mnist"}  # ... and Fashion-MNIST as the four .gz files
_IDX_LAYOUT = {"images": (0x03, (IMAGE_SIZE, IMAGE_SIZE)), "labels": (0x01, ())}


def keras_datasets_dir() -> Path:
    """Keras' download folder: ``$KERAS_HOME/datasets``, else ``~/.keras/datasets``."""
    home = os.environ.get("KERAS_HOME")
    return (Path(home) if home else Path.home() / ".keras").expanduser() / "datasets"


def _idx_sha256(array: np.ndarray, part: str) -> str:
    """SHA-256 of the IDX file an array came from (header + bytes), as the checksums are kept."""
    import hashlib

    code, _ = _IDX_LAYOUT[part]
    header = bytes([0, 0, 0x08, code]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    digest = hashlib.sha256(header)
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _verified(name: str, kind: str, images: np.ndarray, labels: np.ndarray, source: str) -> bool:
    """Whether arrays found elsewhere are this dataset's: shape, dtype and the IDX checksums."""
    try:
        _check_pair(images, labels, Path(source), Path(source))
    except DataError as err:
        log.warning("not using %s: %s", source, err)
        return False
    sums = dataset_info(name).sha256
    for part, array in (("images", images), ("labels", labels)):
        expected = sums[FILES[f"{kind}-{part}"]]
        if expected is not None and _idx_sha256(array, part) != expected:
            log.warning("not using %s: its %s %s differ from %s's", source, kind, part, name)
            return False
    return True


def _from_idx_folder(name: str, kind: str, folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    paths = [find_file(folder, FILES[f"{kind}-{part}"]) for part in ("images", "labels")]
    if None in paths:
        return None
    try:
        images, labels = read_idx(paths[0]), read_idx(paths[1])
    except DataError as err:
        log.warning("not using %s: %s", folder, err)
        return None
    return (images, labels) if _verified(name, kind, images, labels, str(folder)) else None


def _from_keras_npz(name: str, kind: str, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    keys = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}[kind]
    try:
        # allow_pickle=False: an .npz holding Python objects is refused, never unpickled.
        with np.load(path, allow_pickle=False) as npz:
            if not set(keys) <= set(npz.files):
                log.warning("not using %s: it has no %s", path, " and ".join(keys))
                return None
            images, labels = npz[keys[0]], npz[keys[1]]
    except (OSError, ValueError, zlib.error) as err:
        log.warning("not using %s: not a readable .npz of arrays (%s)", path, err)
        return None
    return (images, labels) if _verified(name, kind, images, labels, str(path)) else None


def load_from_other_tools(
    name: str, data_root: str | os.PathLike[str], kind: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """A split's (images, labels) from where torchvision or Keras put the dataset, or None.

    Tried in order: ``<data_root>/<MNIST|FashionMNIST|KMNIST>/raw/`` (torchvision), then Keras'
    ``mnist.npz`` or ``fashion-mnist/`` folder. A copy is used only if it has the right shapes
    and dtypes and, where checksums are published, the same SHA-256 as the original IDX files
    (for an .npz: of the IDX bytes its arrays stand for); otherwise it is skipped with a warning.
    """
    tv = TORCHVISION_FOLDERS.get(name)
    if tv is not None:
        found = _from_idx_folder(name, kind, Path(data_root) / tv / "raw")
        if found is not None:
            log.info("reading %s %s from torchvision's copy in %s", name, kind, data_root)
            return found
    keras = keras_datasets_dir()
    if name in KERAS_NPZ:
        found = _from_keras_npz(name, kind, keras / KERAS_NPZ[name])
        if found is not None:
            log.info("reading %s %s from Keras' %s", name, kind, keras / KERAS_NPZ[name])
            return found
    if name in KERAS_FOLDERS:
        found = _from_idx_folder(name, kind, keras / KERAS_FOLDERS[name])
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- torch Datasets


class SplitDataset(torch.utils.data.Dataset):
    """One split as a standard ``torch.utils.data.Dataset`` for your own training loop.

    Item ``i`` is ``(image, label)``: float32 (1, 28, 28) in [0, 1] and an int, as the network
    takes them; ``transform`` / ``target_transform`` are applied to each when given.
    """

    def __init__(
        self,
        split: Split,
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
    ) -> None:
        self.split = split
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image = to_float(self.split.images[index]).unsqueeze(0)
        label: Any = int(self.split.labels[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label


def torch_datasets(
    name: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    full_train: bool = False,
    download: bool = True,
) -> dict[str, SplitDataset]:
    """``{"train", "val", "test"}`` -> :class:`SplitDataset`, split as :func:`load_dataset` does."""
    data = load_dataset(name, data_dir, full_train=full_train, download=download)
    return {split: SplitDataset(data.split(split)) for split in SPLITS}
