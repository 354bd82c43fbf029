"""A complete run keeps its report: report.md with the scores, each block's error, the timings and
the config, and two PNG charts, all listed in the run's COMPLETE marker."""

from __future__ import annotations

import json

from PIL import Image

from llmc.config import load_config
from llmc.rundir import read_marker
from llmc.runner import run


def test_a_run_writes_its_report(llava_run_config, tmp_path, one_thread):
    cfg = load_config(llava_run_config({"method": "RTN", "weight": {"bit": 3, "group_size": 32}}))
    run_dir = tmp_path / "run"
    res = run(cfg, run_dir, device="cpu")
    text = (run_dir / "report.md").read_text()
    assert res["label"] in text and res["table"].strip() in text
    for b in res["blocks"]:
        assert f"| {b['i'] + 1} | {b['block_error']:.4f} |" in text
    assert "| quantize |" in text and "```yaml" in text and "method: RTN" in text
    for png in ("report-scores.png", "report-blocks.png"):
        assert f"]({png})" in text
        with Image.open(run_dir / png) as im:
            assert im.format == "PNG" and im.width == 720 and im.height > 60
    kinds = {o["kind"] for o in read_marker(run_dir)["outputs"]}
    assert {"report.md", "report-scores.png", "report-blocks.png"} <= kinds
    assert json.loads((run_dir / "results.json").read_text())["run_id"] in (run_dir / "report.md").read_text()


def test_report_summarises_gptq_loss_per_layer_type_from_the_events(tmp_path):
    from llmc.report import write_report

    events = [{"event": "layer_error", "block": b, "layer": f"self_attn.{n}", "error": 0.1, "gptq_loss": loss}
              for b, (n, loss) in enumerate([("q_proj", 2.0), ("q_proj", 4.0), ("o_proj", 0.5)])]
    events.append({"event": "block", "i": 0, "n": 2, "seconds": 1.0, "block_error": 0.1})
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    write_report(tmp_path, {"label": "GPTQ W4", "evals": {}}, "quant: {}")
    text = (tmp_path / "report.md").read_text()
    assert "## GPTQ loss per layer type" in text
    assert "| q_proj | 2 | 3 | 4 (2) |" in text and "| o_proj | 1 | 0.5 | 0.5 (3) |" in text

    other = tmp_path / "rtn"
    other.mkdir()
    (other / "events.jsonl").write_text(json.dumps({"event": "layer_error", "block": 0, "layer": "q_proj",
                                                    "error": 0.1}) + "\n")
    write_report(other, {"label": "RTN W4", "evals": {}}, "quant: {}")
    assert "GPTQ loss" not in (other / "report.md").read_text()
