"""Perplexity on a local text file (non-overlapping windows of ``seq_len`` tokens)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.calib import load_text_corpus


@torch.no_grad()
def perplexity(adapter, path: Path, seq_len: int = 2048, bs: int = 1, num_samples: int | None = None,
               progress=None) -> dict:
    texts = load_text_corpus(Path(path))
    ids = adapter.tokenizer("\n\n".join(texts), return_tensors="pt").input_ids[0]
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"eval.path: {path} has {ids.numel()} tokens, fewer than eval.seq_len={seq_len}")
    if num_samples:
        n = min(n, int(num_samples))
    windows = ids[: n * seq_len].view(n, seq_len)
    nll, count = 0.0, 0
    model = adapter.mm_model
    for s in range(0, n, max(1, bs)):
        batch = windows[s:s + bs].to(adapter.device)
        logits = model(input_ids=batch).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += batch[:, 1:].numel()
        if progress:
            progress(min(s + bs, n), n)
    return {"ppl": math.exp(nll / count), "tokens": count, "windows": n}
