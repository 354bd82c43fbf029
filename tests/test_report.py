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
