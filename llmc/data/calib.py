"""Calibration sets: ``custom_mm`` (images + questions), ``custom_txt`` and llmc's text sets.

``custom_mm``: a folder with ``samples.json`` — a list of ``{"image": <relative path or list>,
"question": ..., "answer": ...}`` — and the images. Text sets (``custom_txt``, ``pileval``,
``wikitext2``, ``c4``) load from a local ``path`` in their usual formats: a ``.txt`` file, a
``.json``/``.jsonl`` (``.gz``) file of records with a ``text`` field (or a JSON list of strings),
parquet files, or a ``datasets.save_to_disk`` folder. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from ..models.base import Sample

TEXT_SETS = ("custom_txt", "pileval", "wikitext2", "c4")


def load_custom_mm(path: Path, n_samples: int | None, seed: int = 0) -> list[Sample]:
    from PIL import Image

    path = Path(path)
    meta = path / "samples.json" if path.is_dir() else path
    if not meta.exists():
        raise FileNotFoundError(f"calib.path: {meta} not found; a custom_mm set is a folder with samples.json and images")
    root = meta.parent
    rows = json.loads(meta.read_text())
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"calib.path: {meta} must hold a non-empty JSON list of samples")
    if n_samples and n_samples < len(rows):
        rows = rows[:n_samples]
    out = []
    for k, r in enumerate(rows):
        img = r.get("image")
        if isinstance(img, list):
            img = img[0] if img else None
        pil = None
        if img:
            f = root / img
            if not f.exists():
                raise FileNotFoundError(f"calib sample {k}: image {f} not found")
            pil = Image.open(f).convert("RGB")
        q = r.get("question") or r.get("text") or ""
        out.append(Sample(question=q, image=pil, answer=r.get("answer"), meta={"image_path": str(img) if img else None}))
    return out


def _read_records(path: Path) -> list[str]:
    suffixes = "".join(path.suffixes[-2:])
    opener = gzip.open if path.suffix == ".gz" else open
    if path.suffix == ".txt":
        return [path.read_text()]
    if ".jsonl" in suffixes:
        with opener(path, "rt") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    if ".json" in suffixes:
        with opener(path, "rt") as f:
            data = json.load(f)
        if isinstance(data, dict):
            data = data.get("data") or data.get("text") or []
        return [d if isinstance(d, str) else d["text"] for d in data]
    if path.suffix == ".parquet":
        import datasets

        return list(datasets.load_dataset("parquet", data_files=str(path), split="train")["text"])
    raise ValueError(f"unsupported text file {path}: use .txt, .json, .jsonl(.gz) or .parquet")


def load_text_corpus(path: Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text data not found: {path}")
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[next(iter(ds))]
            return list(ds["text"])
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".json", ".jsonl", ".gz", ".parquet"))
        if not files:
            raise ValueError(f"{path}: no .txt/.json/.jsonl/.parquet files inside")
        return [t for f in files for t in _read_records(f)]
    return _read_records(path)


def text_windows(texts: list[str], tokenizer, n_samples: int, seq_len: int, seed: int = 0, name: str = "custom_txt"):
    """Token windows: random ``seq_len`` windows of the joined corpus (GPTQ-style) for
    wikitext2/c4/pileval; one sample per record (truncated) for custom_txt."""
    import torch

    rng = random.Random(seed)
    if name == "custom_txt":
        out = []
        for t in texts[: n_samples or None]:
            ids = tokenizer(t, return_tensors="pt").input_ids[:, :seq_len]
            out.append({"input_ids": ids})
        return out
    joined = "\n\n".join(texts)
    ids = tokenizer(joined, return_tensors="pt").input_ids
    if ids.shape[1] <= seq_len:
        return [{"input_ids": ids}]
    out = []
    for _ in range(n_samples):
        s = rng.randint(0, ids.shape[1] - seq_len - 1)
        out.append({"input_ids": ids[:, s:s + seq_len]})
    return out if out else [{"input_ids": torch.as_tensor(ids[:, :seq_len])}]


def load_mme_pairs(path: Path, n_samples: int | None) -> list[Sample]:
    """Image-question(-answer) samples from an MME-format (lmms-eval) data set."""
    from ..eval.mme import load_dataset

    ds = load_dataset(Path(path))
    n = len(ds) if not n_samples else min(n_samples, len(ds))
    return [Sample(question=r["question"], image=r["image"].convert("RGB"), answer=r.get("answer"),
                   meta={"question_id": r.get("question_id")}) for r in ds.select(range(n))]


def load_text_lines(path: Path, n_samples: int | None) -> list[Sample]:
    """Text-only prompts: one per non-empty line of a text set (no image; a VLM reads them as text)."""
    lines = [line.strip() for t in load_text_corpus(Path(path)) for line in t.splitlines() if line.strip()]
    return [Sample(question=line) for line in lines[: n_samples or None]]


_PARTS = {"custom_mm": lambda p, seed: load_custom_mm(Path(p.path), p.n_samples, seed),
          "mme": lambda p, seed: load_mme_pairs(Path(p.path), p.n_samples),
          "text_lines": lambda p, seed: load_text_lines(Path(p.path), p.n_samples)}


def calib_samples(cfg) -> list[Sample] | None:
    """The samples of a sample-based calibration set (``custom_mm``, ``mixture``: its parts
    interleaved, so every evenly spaced subset holds each part); None for token sets."""
    if cfg.name == "custom_mm":
        return load_custom_mm(Path(cfg.path), cfg.n_samples, cfg.seed)
    if cfg.name != "mixture":
        return None
    streams = [_PARTS[p.name](p, cfg.seed or 0) for p in cfg.parts]
    out: list[Sample] = []
    for k in range(max(len(s) for s in streams)):
        out += [s[k] for s in streams if k < len(s)]
    return out


def load_calib(cfg, adapter, samples: list[Sample] | None = None) -> list[dict]:
    """Calibration batches (model inputs) for ``adapter`` from the ``calib`` config section
    (``samples``: its :func:`calib_samples`, when already loaded)."""
    name = cfg.name
    samples = samples if samples is not None else calib_samples(cfg)
    if samples is not None:
        # One sample per forward pass (``calib.bs`` is accepted but not needed): no padding
        # tokens ever enter the activation statistics.
        return [adapter.batch_process([s], add_answer=bool(cfg.add_answer)) for s in samples]
    if name in TEXT_SETS:
        texts = load_text_corpus(Path(cfg.path))
        batches = text_windows(texts, adapter.tokenizer, cfg.n_samples or 128, cfg.seq_len or 512, cfg.seed, name)
        return [{k: v.to(adapter.device) for k, v in b.items()} for b in batches]
    if name == "token_ids":
        return [{"input_ids": row.unsqueeze(0).to(adapter.device)}
                for row in load_token_ids(Path(cfg.path), cfg.n_samples, cfg.seq_len, adapter)]
    raise ValueError(f"calib.name: unknown calibration set {name!r}; use custom_mm, mixture, token_ids, "
                     f"{', '.join(TEXT_SETS)}")


def load_token_ids(path: Path, n_samples: int | None, seq_len: int | None, adapter=None):
    """Token ids ready for the model, from a safetensors file holding ``input_ids`` (n, length),
    integer: the first ``n_samples`` rows, each cut to ``seq_len``. Ids outside the model's
    vocabulary are refused with the first offending value."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"calib.path: {path} is not a .safetensors file; token_ids reads one holding input_ids")
    ids = load_file(str(path)).get("input_ids")
    if ids is None or ids.dim() != 2 or ids.dtype.is_floating_point:
        raise ValueError(f"calib.path: {path} holds no 2-D integer input_ids tensor (n, length)")
    ids = ids[: n_samples or None, : seq_len or None].long()
    emb = getattr(getattr(adapter, "mm_model", None), "get_input_embeddings", lambda: None)()
    if emb is not None and ids.numel() and (int(ids.max()) >= emb.num_embeddings or int(ids.min()) < 0):
        bad = int(ids.max()) if int(ids.max()) >= emb.num_embeddings else int(ids.min())
        raise ValueError(f"calib.path: {path} holds token id {bad}, outside the model's vocabulary "
                         f"of {emb.num_embeddings}; tokenize with the model's own tokenizer")
    return torch.unbind(ids, 0)
