"""A YAML document built to exhaust its reader (aliases) is refused at once, in one line."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


@pytest.mark.parametrize("field", ["generate.name", "run.run_dir", "source.weights_url"])
def test_an_answers_file_of_laughs_is_one_line_in_a_second(tmp_path, field):
    section, key = field.split(".")
    path = tmp_path / "answers.yml"
    path.write_text(LAUGHS + f"{section}:\n  {key}: *i\n")
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "wizard", "inspect", "--answers", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert time.monotonic() - t < 60
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "aliases are expanded" in p.stderr, p.stderr[-500:]


def test_an_engine_config_of_laughs_is_one_line(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(LAUGHS + "model: {type: Llava, path: *i}\n")
    p = subprocess.run([sys.executable, "-m", "llmc", "check", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "aliases are expanded" in p.stderr and "Traceback" not in p.stderr


def test_shared_aliases_that_stay_small_still_load(tmp_path):
    import yaml

    from llmc.yamlload import BoundedLoader

    doc = "base: &b {bit: 4, group_size: 32}\nx: *b\ny: [*b, *b]\nself: &s [1]\n"
    assert yaml.load(doc, Loader=BoundedLoader)["y"] == [{"bit": 4, "group_size": 32}] * 2
    with pytest.raises(yaml.YAMLError, match="contains itself"):
        yaml.load("a: &a [*a]\n", Loader=BoundedLoader)
