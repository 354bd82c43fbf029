"""Text-only adapters (Llama, Qwen2): custom_txt / wikitext2-style calibration, perplexity eval."""

from __future__ import annotations

import json

import pytest
import torch

from llmc.config import load_config
from llmc.runner import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from wizard.demo import shapes

    d = tmp_path_factory.mktemp("text")
    lines = [shapes.scene_at(5, i).caption() for i in range(400)]
    (d / "train.txt").write_text("\n".join(lines[:300]))
    (d / "test.txt").write_text("\n".join(lines[300:]))
    (d / "samples.json").write_text(json.dumps(lines[:32]))
    return d


def _tiny_lm(kind, out):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from wizard.demo.train import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(LlamaConfig(**common)) if kind == "Llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind,method,calib", [("Llama", "GPTQ", "wikitext2"), ("Qwen2", "Awq", "custom_txt")])
def test_text_model_run_with_perplexity(kind, method, calib, corpus, tmp_path):
    path = _tiny_lm(kind, tmp_path / kind)
    cfg = {
        "model": {"type": kind, "path": str(path), "torch_dtype": "float32"},
        "calib": {"name": calib, "path": str(corpus / ("train.txt" if calib == "wikitext2" else "samples.json")),
                  "n_samples": 8, "seq_len": 64},
        "eval": {"eval_pos": ["pretrain", "fake_quant"], "type": "ppl", "name": "wikitext2",
                 "path": str(corpus / "test.txt"), "seq_len": 64, "bs": 4},
        "quant": {"method": method, "weight": {"bit": 8, "group_size": 32, "granularity": "per_group"}},
        "save": {"save_path": str(tmp_path / "out"), "save_fake": True},
    }
    res = run(load_config(cfg), tmp_path / "out", device="cpu")
    ppl = res["evals"]["wikitext2"]
    base, quant = ppl["pretrain"]["ppl"], ppl["fake_quant"]["ppl"]
    assert 1 < base < 1e4
    assert abs(quant - base) / base < 0.02  # 8-bit barely moves a random model
    assert "| perplexity |" in res["table"]
    assert (tmp_path / "out" / "fake" / "config.json").exists()


def test_ppl_needs_enough_tokens(corpus, tmp_path):
    from llmc.eval.ppl import perplexity
    from llmc.models import get_model_class

    m = get_model_class("Llama")(_tiny_lm("Llama", tmp_path / "m"), "float32", "cpu")
    (tmp_path / "short.txt").write_text("two words")
    with pytest.raises(ValueError, match="fewer than eval.seq_len=64"):
        perplexity(m, tmp_path / "short.txt", seq_len=64)
