"""A run's report: one Markdown file with two PNG charts, kept in the run directory.

``report.md`` holds what a reader of the run needs without the wizard: the setting, the score
table (original vs quantized), per-category score bars, each block's output error, the timings
and the effective config. ``report-scores.png`` and ``report-blocks.png`` are drawn with Pillow
(no plotting library needed) and linked from the Markdown.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

_W, _ROW, _LEFT, _PAD = 720, 22, 170, 12
_ORIG, _QUANT, _LAST = (120, 144, 156), (33, 150, 243), (255, 152, 0)


def _chart(rows: list[tuple[str, list[tuple[float, tuple]]]], top: float, title: str, fmt: str) -> Image.Image:
    """Horizontal bars: one row per label, one bar per (value, colour) of the row."""
    bars = sum(len(v) for _, v in rows)
    img = Image.new("RGB", (_W, _PAD * 3 + _ROW + bars * _ROW + len(rows) * 4), "white")
    d = ImageDraw.Draw(img)
    d.text((_PAD, _PAD), title, fill="black")
    y = _PAD * 2 + _ROW
    span = _W - _LEFT - 90
    for label, values in rows:
        d.text((_PAD, y + 4), label[:26], fill="black")
        for value, colour in values:
            width = 0 if top <= 0 else max(1, int(span * max(value, 0.0) / top))
            d.rectangle([_LEFT, y + 3, _LEFT + width, y + _ROW - 3], fill=colour)
            d.text((_LEFT + width + 6, y + 5), fmt.format(value), fill="black")
            y += _ROW
        y += 4
    return img


def format_table(results: dict, label: str) -> str:
    """The seed's score table: original vs quantized, per category, totals and deltas."""
    lines = []
    for name, per_pos in results["evals"].items():
        orig = per_pos.get("pretrain")
        quant = per_pos.get("fake_quant")
        cols = [("original", orig), (label, quant)]
        cols = [(c, s) for c, s in cols if s]
        if not cols:
            continue
        kind = cols[0][1]["kind"]
        header = f"| {name} | " + " | ".join(c for c, _ in cols) + (" | delta |" if len(cols) == 2 else " |")
        lines += [header, "|" + "---|" * (len(cols) + 1 + (len(cols) == 2))]
        if kind == "mme":
            keys = list(cols[0][1]["categories"]) + ["perception", "cognition", "total"]
            for k in keys:
                vals = [s["categories"].get(k) if k in s["categories"] else s.get(k) for _, s in cols]
                row = f"| {k} | " + " | ".join(f"{v:.2f}" for v in vals)
                if len(vals) == 2:
                    row += f" | {vals[1] - vals[0]:+.2f}"
                lines.append(row + " |")
        else:
            vals = [s["ppl"] for _, s in cols]
            row = "| perplexity | " + " | ".join(f"{v:.3f}" for v in vals)
            if len(vals) == 2:
                row += f" | {vals[1] - vals[0]:+.3f}"
            lines.append(row + " |")
        lines.append("")
    return "\n".join(lines)


def score_values(results: dict, totals: bool = False):
    """``(eval name, key, original, quantized)`` for every evaluation of ``results``: each MME
    category (then perception, cognition and total with ``totals``), a perplexity's ``ppl``.
    A side that was not evaluated is ``None``."""
    for name, per_pos in results.get("evals", {}).items():
        orig, quant = per_pos.get("pretrain") or {}, per_pos.get("fake_quant") or {}
        ref = orig or quant
        if not ref:
            continue
        if ref.get("kind") == "mme":
            for cat in ref["categories"]:
                yield name, cat, orig.get("categories", {}).get(cat), quant.get("categories", {}).get(cat)
            if totals:
                for k in ("perception", "cognition", "total"):
                    yield name, k, orig.get(k), quant.get(k)
        else:  # a perplexity (never an MME category's name)
            yield name, "ppl", orig.get("ppl"), quant.get("ppl")


def score_rows(results: dict) -> list[tuple[str, float | None, float | None]]:
    """(category, original, quantized) of every MME evaluation's categories."""
    return [(f"{name}: {k}", o, q) for name, k, o, q in score_values(results) if k != "ppl"]


def gptq_loss_lines(run_dir: Path) -> list[str]:
    """A per-layer-type summary of GPTQ's own loss from the run's ``layer_error`` events (none
    without them): how many layers, the mean loss and the largest with its block."""
    from .events import LayerError, load_events

    per_type: dict[str, list[tuple[float, int]]] = {}
    for e in load_events(Path(run_dir) / "events.jsonl"):
        if isinstance(e, LayerError) and e.gptq_loss is not None:
            per_type.setdefault(e.layer.rsplit(".", 1)[-1], []).append((e.gptq_loss, e.block))
    if not per_type:
        return []
    lines = ["## GPTQ loss per layer type", "", "GPTQ's own objective (the error its column updates minimise, "
             "summed over output rows), from the layer_error events.", "",
             "| layer type | layers | mean loss | largest (block) |", "|---|---|---|---|"]
    for kind, vals in per_type.items():
        top = max(vals)
        lines.append(f"| {kind} | {len(vals)} | {sum(v for v, _ in vals) / len(vals):.4g} | {top[0]:.4g} ({top[1] + 1}) |")
    return lines + [""]


def write_report(run_dir: Path, results: dict, config_yaml: str) -> dict[str, Path]:
    """Write ``report.md`` and its charts into ``run_dir``; returns ``{name: path}`` of what was written."""
    from .events import Warned, load_events
    from .rundir import atomic_write_text

    run_dir = Path(run_dir)
    written: dict[str, Path] = {}
    lines = [f"# Run report: {results.get('label', '')}", "",
             f"Device: {results.get('device', '?')}; run id `{results.get('run_id', '')}`.", "",
             "## Scores: original vs quantized", "", results.get("table", "").strip() or "(no evaluation)", ""]
    warned = [e.message for e in load_events(run_dir / "events.jsonl") if isinstance(e, Warned)]
    if warned:  # what the run said before these scores were computed
        lines[-1:-1] = ["", "Warnings of this run:", "", *(f"- {m}" for m in warned)]
    scores = score_rows(results)
    if scores:
        img = _chart([(c, [(o or 0.0, _ORIG), (q or 0.0, _QUANT)]) for c, o, q in scores], 200.0,
                     "score per category (max 200): grey original, blue quantized", "{:.1f}")
        img.save(run_dir / "report-scores.png")
        written["report-scores.png"] = run_dir / "report-scores.png"
        lines += ["![scores per category](report-scores.png)", ""]
    blocks = [b for b in results.get("blocks", []) if b.get("block_error") is not None]
    if results.get("blocks") and not blocks:
        lines += ["## Output error per block", "", "Rounded without calibration data: no errors were measured "
                  "(add a calib section to measure them).", ""]
    if blocks:
        top = max(max(b["block_error"], b.get("last_error") or 0.0) for b in blocks) or 1.0
        img = _chart([(f"block {b['i'] + 1}", [(b["block_error"], _QUANT), (b.get("last_error") or 0.0, _LAST)])
                      for b in blocks], top, "relative output error per block: blue every token, orange the last",
                     "{:.4f}")
        img.save(run_dir / "report-blocks.png")
        written["report-blocks.png"] = run_dir / "report-blocks.png"
        lines += ["## Output error per block", "", "![output error per block](report-blocks.png)", "",
                  "| block | error (every token) | error (last token) | seconds | worst layer |", "|---|---|---|---|---|"]
        for b in blocks:
            worst = max(b.get("layer_errors", {}).items(), key=lambda kv: kv[1], default=("-", 0.0))
            lines.append(f"| {b['i'] + 1} | {b['block_error']:.4f} | {b.get('last_error') or 0.0:.4f} | "
                         f"{b.get('seconds', 0.0):.2f} | {worst[0]} ({worst[1]:.4f}) |")
        lines.append("")
    lines += gptq_loss_lines(run_dir)
    timings = results.get("timings", {})
    if timings:
        lines += ["## Timings", "", "| phase | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
        lines.append("")
    lines += ["## Config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))
    written["report.md"] = run_dir / "report.md"
    return written
