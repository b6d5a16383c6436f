"""NF4 weight storage and QLoRA (PaddleNLP's LoRA over an NF4 base), on tiny random models."""

import os
import statistics

import numpy as np
import paddle
import pytest
from paddlenlp.peft import LoRAConfig, LoRAModel
from paddlenlp.peft.lora.lora_layers import LoRALinear
from paddlenlp.transformers import Qwen2Config, Qwen2ForCausalLM

from finetune_helpers import quant

R = 4
LEVELS = np.asarray(quant.NF4_LEVELS, dtype=np.float32)


def tiny_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    """2 layers, hidden 64, 4 query / 2 key-value heads (k/v project to 32), FFN 128."""
    paddle.seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    model.eval()
    return model


def with_lora(model: Qwen2ForCausalLM, **options) -> LoRAModel:
    paddle.seed(1)  # lora_A is drawn from paddle's generator
    lora = LoRAModel(model, LoRAConfig(target_modules=list(quant.PROJECTIONS), r=R, lora_alpha=8,
                                       tensor_parallel_degree=1, **options))
    lora.mark_only_lora_as_trainable()
    return lora


def qlora(seed: int = 0) -> LoRAModel:
    lora = with_lora(tiny_qwen2(seed))
    quant.quantize_model(lora, quant.PROJECTIONS)
    return lora


IDS = paddle.to_tensor(np.random.default_rng(0).integers(0, 96, size=(2, 12)))


def logits(model) -> np.ndarray:
    with paddle.no_grad():
        out = model(input_ids=IDS)
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def reference_dequantize(codes: np.ndarray, scales: np.ndarray, shape, block=64) -> np.ndarray:
    """An independent numpy decoder: high nibble first, level * block scale."""
    nibbles = np.stack([codes >> 4, codes & 15], axis=1).reshape(-1)
    values = (LEVELS[nibbles].reshape(-1, block) * scales[:, None]).reshape(-1)
    return values[:int(np.prod(shape))].reshape(shape)


# --- the NF4 format --------------------------------------------------------------------------


def test_levels_are_the_qlora_papers_normal_float_quantiles():
    # Dettmers et al. (2023): 8 positive and 7 negative quantiles of N(0, 1) from offset
    # 0.9677083 to 1/2, an exact zero, all divided by the largest.
    offset = 0.9677083
    inv = statistics.NormalDist().inv_cdf
    pos = [inv(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-inv(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    derived = np.sort(np.asarray(pos + [0.0] + neg)) / max(pos)
    np.testing.assert_allclose(quant.NF4_LEVELS, derived, atol=2e-7)
    assert len(set(quant.NF4_LEVELS)) == 16 and quant.NF4_LEVELS[7] == 0.0


def test_hand_made_blocks_give_exact_codes_bytes_and_scales():
    exact = 2.0 * LEVELS[np.arange(64) % 16]        # every level, scaled by absmax 2
    mid = (LEVELS[7] + LEVELS[8]) / np.float32(2)    # between level 7 (0.0) and 8
    rounding = np.zeros(64, np.float32)
    rounding[:4] = [1.0, mid + 1e-3, mid - 1e-3, mid]  # absmax 1; nearest level; a tie goes down
    zeros = np.zeros(64, np.float32)
    codes, scales = quant.quantize_nf4(paddle.to_tensor(np.concatenate([exact, rounding, zeros])))
    assert codes.dtype == paddle.uint8 and scales.dtype == paddle.float32
    np.testing.assert_array_equal(scales.numpy(), [2.0, 1.0, 0.0])
    got = codes.numpy()
    np.testing.assert_array_equal(got[:32], [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF] * 4)
    np.testing.assert_array_equal(got[32:34], [0xF8, 0x77])  # codes 15, 8, 7, 7
    assert (got[34:] == 0x77).all()                           # zeros are code 7
    back = quant.dequantize_nf4(codes, scales, [192]).numpy()
    np.testing.assert_array_equal(back[:64], exact)           # levels survive bit for bit
    np.testing.assert_array_equal(back[128:], zeros)          # scale 0 decodes to zeros


def test_round_trip_error_on_gaussian_weights_beats_uniform_int4():
    w = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    codes, scales = quant.quantize_nf4(paddle.to_tensor(w))
    back = quant.dequantize_nf4(codes, scales, w.shape).numpy()
    error = np.linalg.norm(back - w) / np.linalg.norm(w)
    # The same blocks on a uniform symmetric 4-bit grid (-7..7) x absmax / 7:
    blocks = w.reshape(-1, 64)
    absmax = np.abs(blocks).max(axis=1, keepdims=True)
    uniform = (np.round(blocks / absmax * 7) / 7 * absmax).reshape(w.shape)
    uniform_error = np.linalg.norm(uniform - w) / np.linalg.norm(w)
    assert 0.085 < error < 0.10, error
    assert error < 0.9 * uniform_error, (error, uniform_error)
    np.testing.assert_array_equal(back, reference_dequantize(codes.numpy(), scales.numpy(),
                                                             w.shape))


def test_storage_is_four_bits_per_weight_plus_a_float32_scale_per_block():
    paddle.seed(0)
    layer = quant.NF4Linear.from_linear(paddle.nn.Linear(128, 96))
    assert layer.nf4_codes.dtype == paddle.uint8 and layer.nf4_codes.shape == [128 * 96 // 2]
    assert layer.nf4_scales.shape == [128 * 96 // 64]
    assert quant.nf4_nbytes(layer) == 128 * 96 // 2 + 4 * 128 * 96 // 64 == 6912
    assert [p.name for p in layer.parameters()] == [layer.bias.name]  # codes are not parameters
    assert layer.nf4_codes.stop_gradient and layer.nf4_scales.stop_gradient
    assert {"nf4_codes", "nf4_scales", "bias"} == set(layer.state_dict())
    # A size that is not a whole number of blocks is zero-padded to one:
    odd = quant.NF4Linear.from_linear(paddle.nn.Linear(10, 7))
    assert quant.nf4_nbytes(odd) == 64 + 2 * 4 and odd.dequantized_weight().shape == [10, 7]


def test_forward_is_x_times_the_dequantised_weight_plus_bias_and_input_gets_gradients():
    paddle.seed(0)
    linear = paddle.nn.Linear(128, 96)
    layer = quant.NF4Linear.from_linear(linear)
    assert layer.bias is linear.bias
    weight = layer.dequantized_weight()
    np.testing.assert_array_equal(weight.numpy(), reference_dequantize(
        layer.nf4_codes.numpy(), layer.nf4_scales.numpy(), [128, 96]))
    x = paddle.randn([3, 5, 128])
    x.stop_gradient = False
    out = layer(x)
    np.testing.assert_array_equal(out.numpy(), (paddle.matmul(x, weight) + linear.bias).numpy())
    out.sum().backward()
    x_ref = x.detach()
    x_ref.stop_gradient = False
    (paddle.matmul(x_ref, weight) + linear.bias).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x_ref.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_backward_dequantises_again_instead_of_keeping_the_float32_weight(monkeypatch):
    layer = quant.NF4Linear.from_linear(paddle.nn.Linear(64, 32))
    calls = []
    real = layer.dequantized_weight
    monkeypatch.setattr(layer, "dequantized_weight", lambda: calls.append(1) or real())
    x = paddle.randn([2, 64])
    x.stop_gradient = False
    out = layer(x)
    assert len(calls) == 1
    out.sum().backward()
    assert len(calls) == 2 and x.grad is not None


# --- quantize_model --------------------------------------------------------------------------


def test_quantize_model_swaps_every_projection_and_reports_the_bytes():
    model = tiny_qwen2()
    before = logits(model)
    embedding, head = model.qwen2.embed_tokens.weight, model.lm_head.weight
    q_bias = model.qwen2.layers[0].self_attn.q_proj.bias
    report = quant.quantize_model(model, quant.PROJECTIONS)
    assert len(report.layers) == 14 and report.layers[0] == "qwen2.layers.0.self_attn.q_proj"
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128
    assert report.weights == 2 * per_layer == 73_728
    assert report.bytes_before == 4 * 73_728
    assert report.bytes_after == 73_728 // 2 + 4 * 73_728 // 64 == 41_472
    assert report.bits_per_weight == 4.5 and "14 layers" in str(report)
    attn, mlp = model.qwen2.layers[1].self_attn, model.qwen2.layers[1].mlp
    for layer in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                  mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        assert isinstance(layer, quant.NF4Linear)
    assert model.qwen2.layers[0].self_attn.q_proj.bias is q_bias  # the bias is kept
    assert model.qwen2.embed_tokens.weight is embedding and model.lm_head.weight is head
    assert not [k for k in model.state_dict() if k.endswith("_proj.weight")]  # fp32 gone
    after = logits(model)
    assert np.linalg.norm(after - before) / np.linalg.norm(before) < 0.1


def test_quantize_model_errors_name_the_problem_and_change_nothing():
    model = tiny_qwen2()
    with pytest.raises(ValueError, match=r"match no layer.*qwen2\.layers\.0\.self_attn\.q_proj"):
        quant.quantize_model(model, [r"q_proj"])  # re.fullmatch: the whole name must match
    with pytest.raises(TypeError, match="Qwen2MLP.*nn.Linear or LoRALinear"):
        quant.quantize_model(model, [r".*\.q_proj", r".*\.mlp"])
    assert isinstance(model.qwen2.layers[0].self_attn.q_proj, paddle.nn.Linear)  # all or nothing
    quant.quantize_model(model, [r".*\.q_proj"])
    with pytest.raises(ValueError, match="already NF4"):
        quant.quantize_model(model, [r".*\.q_proj"])
    # LoRA must come first: PaddleNLP's LoRAModel refuses layers that are not nn.Linear.
    with pytest.raises(ValueError, match="LoRA strategy only supports paddle.nn.Linear"):
        with_lora(model)


# --- QLoRA: PaddleNLP's LoRA over the NF4 base -----------------------------------------------


def test_only_the_adapters_train_with_the_exact_lora_count():
    lora = qlora()
    trainable = {n: p for n, p in lora.model.named_parameters() if not p.stop_gradient}
    assert trainable and all(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for n in trainable)
    layers = [(n, m) for n, m in lora.model.named_sublayers() if isinstance(m, LoRALinear)]
    assert len(layers) == 14 and all(isinstance(m, quant.NF4LoRALinear) for _, m in layers)
    for name, layer in layers:
        n_in, n_out = layer.nf4_shape
        assert sum(p.numel() for k, p in trainable.items() if k.startswith(name + ".")) \
            == R * (n_in + n_out)
    assert sum(int(p.numel()) for p in trainable.values()) == R * 2 * (
        128 + 96 + 96 + 128 + 3 * (64 + 128))
    assert not [k for k in lora.model.state_dict() if k.endswith("_proj.weight")]


def test_at_init_qlora_logits_equal_the_quantised_base():
    base = tiny_qwen2()
    quant.quantize_model(base, quant.PROJECTIONS)
    lora = qlora()
    np.testing.assert_array_equal(logits(lora), logits(base))  # lora_B = 0
    lora.disable_lora()
    np.testing.assert_array_equal(logits(lora), logits(base))


def train_step(lora: LoRAModel) -> None:
    lora.train()
    optimizer = paddle.optimizer.AdamW(1e-2, parameters=lora.parameters())
    loss = lora(input_ids=IDS[:, :-1], labels=IDS[:, 1:])[0]
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()
    lora.eval()


def test_an_adamw_step_moves_lora_b_and_leaves_the_packed_base_bit_identical():
    lora = qlora()
    layer = lora.model.qwen2.layers[0].self_attn.q_proj
    base = {k: v.numpy().copy() for k, v in lora.model.state_dict().items() if "lora_" not in k}
    train_step(lora)
    assert np.abs(layer.lora_B.numpy()).max() > 0
    after = lora.model.state_dict()
    for name, value in base.items():  # codes, scales, biases, norms, embeddings, head
        np.testing.assert_array_equal(after[name].numpy(), value, err_msg=name)


def test_saving_only_the_adapters_and_reloading_them_reproduces_the_model(tmp_path):
    lora = qlora()
    train_step(lora)
    adapters = quant.adapter_state_dict(lora)
    assert len(adapters) == 2 * 14 and all("lora_" in k for k in adapters)
    lora.save_pretrained(str(tmp_path))
    saved = paddle.load(str(tmp_path / "lora_model_state.pdparams"))
    assert set(saved) == set(adapters)  # no NF4 codes, no base weights
    assert os.path.getsize(tmp_path / "lora_model_state.pdparams") < 100_000
    restored = LoRAModel.from_pretrained(tiny_qwen2(), str(tmp_path))  # onto a fresh fp32 base
    quant.quantize_model(restored, quant.PROJECTIONS)
    restored.eval()
    np.testing.assert_array_equal(logits(restored), logits(lora))


def test_merging_and_non_plain_lora_variants_are_refused():
    lora = qlora()
    with pytest.raises(NotImplementedError, match="save the adapters|Save the adapters"):
        lora.merge()
    pissa = with_lora(tiny_qwen2(), pissa=True)
    with pytest.raises(NotImplementedError, match="pissa"):
        quant.quantize_model(pissa, quant.PROJECTIONS)
