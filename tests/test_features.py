"""finetune_helpers.features: training on cached features equals training through the frozen part."""

import numpy as np
import paddle
import pytest
from paddle import nn
from paddle.vision.models import resnet18

from finetune_helpers import cache, features
from finetune_helpers.features import FeatureDataset, extract_features
from finetune_helpers.train import fit


class Images(paddle.io.Dataset):
    def __init__(self, n=64, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        self.y = rng.integers(0, 10, n).astype(np.int64)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_backbone():
    paddle.seed(0)
    return nn.Sequential(resnet18(pretrained=False, num_classes=0), nn.Flatten())  # 512 features


class FreezeBackbone:
    """Freeze the backbone; after fit's model.train() put it back in eval mode (BatchNorm)."""

    def __init__(self, backbone):
        self.backbone = backbone
        for p in backbone.parameters():
            p.stop_gradient = True

    def on_epoch_begin(self, epoch, model, optimizer):
        self.backbone.eval()


def test_head_on_cached_features_equals_head_on_frozen_backbone():
    data = Images()
    backbone = make_backbone()
    before = {k: v.numpy().copy() for k, v in backbone.state_dict().items()}
    paddle.seed(1)
    head_init = nn.Linear(512, 10).state_dict()

    # A: nn.Sequential(frozen backbone, head), images every epoch
    head_a = nn.Linear(512, 10)
    head_a.set_state_dict({k: v.clone() for k, v in head_init.items()})
    model = nn.Sequential(backbone, head_a)
    freeze = FreezeBackbone(backbone)
    opt_a = paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters())
    hist_a = fit(model, paddle.io.DataLoader(data, batch_size=16, shuffle=True), opt_a, 3,
                 callbacks=[freeze], progress=False, seed=0)

    # B: the backbone once, then the head on cached features (other batch size on purpose)
    feats, labels = extract_features(backbone, paddle.io.DataLoader(data, batch_size=10),
                                     progress=False)
    assert feats.shape == (64, 512) and feats.dtype == np.float32
    np.testing.assert_array_equal(labels, data.y)
    head_b = nn.Linear(512, 10)
    head_b.set_state_dict({k: v.clone() for k, v in head_init.items()})
    opt_b = paddle.optimizer.Adam(learning_rate=1e-2, parameters=head_b.parameters())
    hist_b = fit(head_b, paddle.io.DataLoader(FeatureDataset(feats, labels), batch_size=16,
                 shuffle=True), opt_b, 3, progress=False, seed=0)

    np.testing.assert_allclose(hist_a.step_losses, hist_b.step_losses, rtol=0, atol=1e-5)
    for name in ("weight", "bias"):
        a, b = getattr(head_a, name).numpy(), getattr(head_b, name).numpy()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
        assert np.abs(a - head_init[name].numpy()).max() > 1e-2  # the head did train
    after = backbone.state_dict()
    for k, v in before.items():  # weights and BatchNorm statistics untouched
        np.testing.assert_array_equal(after[k].numpy(), v, err_msg=k)

    # the equivalence needs BatchNorm in eval mode: in train mode the features differ
    backbone.train()
    with paddle.no_grad():
        train_mode = backbone(paddle.to_tensor(data.x[:16])).numpy()
    backbone.eval()
    assert np.abs(train_mode - feats[:16]).max() > 1e-2


def tiny_bert():
    from paddlenlp.transformers import BertConfig, BertModel
    paddle.seed(0)
    return BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32,
                                max_position_embeddings=16, hidden_dropout_prob=0.5))


def text_batches(n=24, length=6):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 40, (n, length))
    return [{"input_ids": paddle.to_tensor(ids[i:i + 8]),
             "attention_mask": paddle.ones([8, length], "int64"),
             "labels": paddle.to_tensor(np.arange(i, i + 8))} for i in range(0, n, 8)]


def test_text_features_use_keyword_inputs_eval_mode_and_restore_mode():
    bert = tiny_bert()
    bert.train()  # dropout 0.5 on: extraction must switch it off
    batches = text_batches()
    feats, labels = extract_features(lambda **kw: bert(**kw)[1], batches, model=bert,
                                     progress=False)
    assert bert.training  # restored
    bert.eval()
    with paddle.no_grad():
        direct = np.concatenate([bert(input_ids=b["input_ids"],
                                      attention_mask=b["attention_mask"])[1].numpy()
                                 for b in batches])
    np.testing.assert_allclose(feats, direct, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labels, np.arange(24))


def test_bad_inputs_name_the_fix():
    bert = tiny_bert()
    with pytest.raises(ValueError, match="pass model="):
        extract_features(lambda **kw: bert(**kw)[1], text_batches(), progress=False)
    with pytest.raises(TypeError, match="selects the output"):
        extract_features(bert, text_batches(), progress=False)  # BertModel returns a tuple
    with pytest.raises(ValueError, match="needs key="):
        extract_features(bert, text_batches(), cache_name="x")
    with pytest.raises(ValueError, match="same extract_features call"):
        FeatureDataset(np.zeros((3, 2)), np.zeros(2))


def test_disk_cache_reuses_and_invalidates(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    layer = nn.Linear(4, 3)
    calls = []
    layer.register_forward_post_hook(lambda *_: calls.append(1))
    rng = np.random.default_rng(0)
    data = [(paddle.to_tensor(rng.standard_normal((5, 4)).astype("float32")),
             paddle.to_tensor(np.arange(5))) for _ in range(2)]
    key = {"data": "random 10x4", "split": "train"}

    f1, y1 = extract_features(layer, data, cache_name="lin", key=key)
    assert len(calls) == 2 and (tmp_path / "lin" / "features.npy").is_file()
    f2, y2 = extract_features(layer, data, cache_name="lin", key=key)
    assert len(calls) == 2  # served from disk
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(y2, np.tile(np.arange(5), 2))
    extract_features(layer, data, cache_name="lin", key={**key, "split": "test"})
    assert len(calls) == 4  # other key: rebuilt
    with paddle.no_grad():
        layer.weight.set_value(layer.weight * 2)
    f3, _ = extract_features(layer, data, cache_name="lin", key={**key, "split": "test"})
    assert len(calls) == 6  # other weights: rebuilt
    assert not np.allclose(f3, f1)


def test_weights_fingerprint_sees_buffers_and_values():
    a = nn.BatchNorm1D(4)
    fp = features.weights_fingerprint(a)
    a.train()
    a(paddle.rand([8, 4]))  # updates the running statistics only
    assert features.weights_fingerprint(a) != fp
