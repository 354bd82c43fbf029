"""The llmc-style config schema: loading, normalisation, defaults and one-line errors."""

from __future__ import annotations

import copy
import os

import pytest
import yaml

from llmc.config import (
    UNSUPPORTED_LLMC_KEYS,
    Config,
    ConfigError,
    EvalConfig,
    load_config,
)
from llmc.quant.methods.awq import AwqOptions
from llmc.quant.methods.gptq import GptqOptions
from llmc.quant.methods.rtn import RtnOptions

# An llmc-layout config, written the way llmc's own example configs are (anchors included).
LLMC_EXAMPLE = """\
base:
    seed: &seed 42
model:
    type: Llava
    path: /path/to/model
    tokenizer_mode: slow
    torch_dtype: auto
calib:
    name: custom_mm
    type: img_txt
    download: False
    path: /path/to/calib
    add_answer: False
    apply_chat_template: True
    n_samples: 128
    bs: -1
    seq_len: 512
    preproc: vlm_general
    padding: True
    seed: *seed
eval:
    eval_pos: [pretrain, fake_quant]
    type: img_txt
    name: MME
    download: False
    path: /path/to/MME
    bs: 16
    seq_len: 2048
    num_samples: null
    inference_per_block: False
    eval_token_consist: False
    cache: True
quant:
    method: Awq
    quant_objects: [language]
    skip_layers: True
    weight:
        bit: 4
        symmetric: False
        granularity: per_group
        group_size: 128
        calib_algo: minmax
    act: null
    special:
        trans: True
        trans_version: v2
        weight_clip: True
        clip_sym: False
        n_grid: 20
    quant_out: True
save:
    save_path: /path/to/save
    save_trans: False
    save_fake: False
"""


@pytest.fixture
def raw() -> dict:
    """The example as a fresh mapping, to be edited by a test."""
    return yaml.safe_load(LLMC_EXAMPLE)


@pytest.fixture
def example_file(tmp_path):
    path = tmp_path / "awq.yml"
    path.write_text(LLMC_EXAMPLE)
    return path


def error_of(config) -> str:
    """The ConfigError message for ``config``; also checks it is one line, free of pydantic."""
    with pytest.raises(ConfigError) as info:
        load_config(config)
    message = str(info.value)
    assert "\n" not in message
    assert "pydantic" not in message and "Input should" not in message
    return message


# -- the example -------------------------------------------------------------------------------

def test_llmc_example_loads_unchanged(example_file):
    cfg = load_config(example_file)
    assert isinstance(cfg, Config)
    assert cfg.base.seed == 42
    assert cfg.model.type == "Llava" and cfg.model.path == "/path/to/model"
    assert cfg.calib is not None
    assert cfg.calib.name == "custom_mm" and cfg.calib.seed == 42 and cfg.calib.bs == -1
    assert cfg.calib.type == "img_txt" and cfg.calib.preproc == "vlm_general"
    assert cfg.quant.method == "Awq"
    assert cfg.quant.weight.bit == 4 and cfg.quant.weight.group_size == 128
    assert isinstance(cfg.quant.special, AwqOptions)
    assert cfg.quant.special.clip_sym is False and cfg.quant.special.n_grid == 20
    assert cfg.quant.act is None and cfg.quant.quant_objects == ["language"]
    assert cfg.save is not None and cfg.save.save_path == "/path/to/save"
    [ev] = cfg.evals
    assert isinstance(ev, EvalConfig)
    assert (ev.type, ev.name, ev.bs, ev.eval_pos) == ("vqa", "mme", 16, ["pretrain", "fake_quant"])


def test_mapping_and_file_give_the_same_config(example_file, raw):
    assert load_config(raw) == load_config(example_file)


def test_seed_anchor_and_default_seed(raw):
    raw["base"]["seed"] = 7
    raw["calib"]["seed"] = 7
    assert load_config(raw).calib.seed == 7
    del raw["calib"]["seed"]
    assert load_config(raw).calib.seed == 7  # calib.seed falls back to base.seed


def test_minimal_config_fills_defaults(tmp_path):
    cfg = load_config({
        "model": {"type": "Llama", "path": "~/models/llama"},
        "quant": {"method": "rtn", "weight": {"bit": 8, "granularity": "per_channel"}},
    })
    assert cfg.model.path == os.path.expanduser("~/models/llama")
    assert not cfg.model.path.startswith("~")
    assert cfg.quant.method == "RTN" and isinstance(cfg.quant.special, RtnOptions)
    assert cfg.quant.skip_layers is True and cfg.quant.quant_out is True
    assert cfg.quant.weight.group_size is None and cfg.quant.weight.calib_algo == "minmax"
    assert cfg.calib is None and cfg.save is None and cfg.evals == []
    assert cfg.base.seed == 42


def test_gptq_defaults_and_case_insensitive_method(raw):
    raw["quant"]["method"] = "gptq"
    raw["quant"]["special"] = {"actorder": True}
    cfg = load_config(raw)
    assert cfg.quant.method == "GPTQ"
    assert cfg.quant.special == GptqOptions(actorder=True, static_groups=False, percdamp=0.01,
                                            blocksize=128, true_sequential=True)


def test_calib_algo_mse_for_gptq_and_rtn_and_refused_for_awq_in_one_line(raw):
    from llmc.quant.methods import weight_config

    assert raw["quant"]["method"] == "Awq"
    raw["quant"]["weight"]["calib_algo"] = "mse"
    msg = error_of(raw)
    assert msg.startswith("quant.weight.calib_algo:") and "weight_clip" in msg and "minmax" in msg
    for method in ("gptq", "rtn"):
        raw["quant"]["method"] = method
        raw["quant"]["special"] = {}
        cfg = load_config(raw)
        assert weight_config(cfg.quant).calib_algo == "mse"
    raw["quant"]["weight"]["calib_algo"] = "mean"
    assert "choose from minmax, mse" in error_of(raw)


def test_awq_clip_sym_defaults_to_weight_symmetric(raw):
    del raw["quant"]["special"]["clip_sym"]
    raw["quant"]["weight"]["symmetric"] = True
    assert load_config(raw).quant.special.clip_sym is True


# -- unknown keys ------------------------------------------------------------------------------

def test_unknown_key_did_you_mean(raw):
    raw["quant"]["weight"]["bits"] = raw["quant"]["weight"].pop("bit")
    assert error_of(raw) == "quant.weight.bits: unknown key; did you mean 'bit'?"


def test_unknown_key_without_close_match_lists_allowed_keys(raw):
    raw["quant"]["weight"]["zzz"] = 1
    assert error_of(raw) == ("quant.weight.zzz: unknown key; allowed keys: bit, symmetric, "
                             "granularity, group_size, calib_algo")


def test_unknown_section_did_you_mean(raw):
    raw["qaunt"] = raw.pop("quant")
    assert error_of(raw) == "qaunt: unknown section; did you mean 'quant'?"


def test_unknown_key_in_calib(raw):
    raw["calib"]["n_sample"] = 3
    assert error_of(raw) == "calib.n_sample: unknown key; did you mean 'n_samples'?"


# -- method and special ------------------------------------------------------------------------

def test_method_typo(raw):
    raw["quant"]["method"] = "Aqw"
    from llmc.quant.methods import names

    assert error_of(raw) == ("quant.method: unknown method 'Aqw'; did you mean 'Awq'? "
                             f"(choose from {', '.join(names())})")
    assert {"RTN", "Awq", "GPTQ"} <= set(names())


def test_llmc_method_not_implemented(raw):
    raw["quant"]["method"] = "HQQ"
    message = error_of(raw)
    assert message.startswith("quant.method: unknown method 'HQQ'; ")
    assert UNSUPPORTED_LLMC_KEYS["quant.method"].rstrip(".") in message


def test_unknown_special_key_for_method(raw):
    raw["quant"]["method"] = "GPTQ"
    raw["quant"]["special"] = {"actordr": True}
    assert error_of(raw) == "quant.special.actordr: not an option of GPTQ; did you mean 'actorder'?"


def test_awq_option_is_not_a_gptq_option(raw):
    raw["quant"]["method"] = "GPTQ"  # special still holds Awq's options
    assert error_of(raw).startswith("quant.special.trans: not an option of GPTQ; ")


def test_rtn_special_options_are_listed(raw):
    raw["quant"]["method"] = "RTN"
    raw["quant"]["special"] = {"n_grid": 10}
    assert error_of(raw) == ("quant.special.n_grid: not an option of RTN; "
                             "its options are rotate, online_rotate")


def test_special_value_checked_per_method(raw):
    raw["quant"]["method"] = "GPTQ"
    raw["quant"]["special"] = {"percdamp": 1.5}
    assert error_of(raw) == ("quant.special.percdamp: 1.5 is out of range; use a number "
                             "between 0 and 1 (exclusive), e.g. 0.01")


# -- values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bit", [9, 1])
def test_bits_out_of_range(raw, bit):
    raw["quant"]["weight"]["bit"] = bit
    assert error_of(raw) == f"quant.weight.bit: {bit} is out of range; use 2..8"


def test_missing_group_size_for_per_group(raw):
    del raw["quant"]["weight"]["group_size"]
    assert error_of(raw) == ("quant.weight.group_size: required when granularity is per_group; "
                             "set e.g. 'group_size: 128' or use 'granularity: per_channel'")


def test_per_channel_needs_no_group_size(raw):
    raw["quant"]["weight"].update(granularity="per_channel", group_size=-1)
    assert load_config(raw).quant.weight.group_size is None


def test_wrong_type_int(raw):
    raw["quant"]["weight"]["bit"] = "four"
    assert error_of(raw) == "quant.weight.bit: expected an integer, got 'four'"


def test_wrong_type_bool_is_not_coerced(raw):
    raw["calib"]["padding"] = "yes"  # a quoted string, not YAML's boolean yes
    assert error_of(raw) == "calib.padding: expected true or false, got 'yes'"


def test_wrong_type_section(raw):
    raw["quant"]["weight"] = 4
    assert error_of(raw) == "quant.weight: expected a mapping, got 4"


def test_literal_did_you_mean(raw):
    raw["calib"]["name"] = "wikitxt2"
    assert error_of(raw) == ("calib.name: 'wikitxt2' is not allowed; did you mean 'wikitext2'? "
                             "(choose from custom_mm, custom_txt, pileval, wikitext2, c4, token_ids, mixture)")


def test_missing_required_section(raw):
    del raw["model"]
    assert error_of(raw) == "model: required section is missing"


def test_calib_required_only_for_calibrating_methods(raw):
    del raw["calib"]
    assert error_of(raw) == ("calib: required for Awq, which calibrates on data; "
                             "add a calib section with name and path")
    raw["quant"]["method"] = "RTN"
    del raw["quant"]["special"]
    assert load_config(raw).calib is None


# -- eval --------------------------------------------------------------------------------------

def test_eval_mapping_and_list(raw):
    single = load_config(raw)
    assert isinstance(single.evals, list) and len(single.evals) == 1

    ppl = {"eval_pos": ["fake_quant"], "name": "wikitext2", "path": "/data/wt2", "seq_len": 1024}
    raw["eval"] = [raw["eval"], ppl]
    both = load_config(raw)
    assert [(e.type, e.name) for e in both.evals] == [("vqa", "mme"), ("ppl", "wikitext2")]
    assert both.evals[0] == single.evals[0]


def test_eval_error_path_follows_the_written_form(raw):
    bad = dict(raw["eval"], bsz=1)
    mapping = copy.deepcopy(raw)
    mapping["eval"] = bad
    assert error_of(mapping) == "eval.bsz: unknown key; did you mean 'bs'?"
    raw["eval"] = [raw["eval"], bad]
    assert error_of(raw) == "eval[1].bsz: unknown key; did you mean 'bs'?"


def test_no_eval_is_an_empty_list(raw):
    del raw["eval"]
    assert load_config(raw).evals == []
    raw["eval"] = None
    assert load_config(raw).evals == []


@pytest.mark.parametrize("written,expected", [("img_txt", "vqa"), ("vqa", "vqa"), ("VQA", "vqa")])
def test_img_txt_means_vqa(raw, written, expected):
    raw["eval"]["type"] = written
    assert load_config(raw).evals[0].type == expected


def test_txt_means_ppl_and_type_is_inferred(raw):
    raw["eval"] = {"eval_pos": ["pretrain"], "type": "txt", "name": "custom", "path": "/d"}
    assert load_config(raw).evals[0].type == "ppl"
    raw["eval"] = {"eval_pos": ["pretrain"], "name": "wikitext2", "path": "/d"}
    assert load_config(raw).evals[0].type == "ppl"
    raw["eval"] = {"eval_pos": ["pretrain"], "name": "custom", "path": "/d"}
    assert error_of(raw) == "eval.type: required for data set 'custom'; set 'type: vqa' or 'type: ppl'"


def test_mme_name_is_case_insensitive_and_needs_vqa(raw):
    raw["eval"]["name"] = "Mme"
    assert load_config(raw).evals[0].name == "mme"
    raw["eval"]["type"] = "ppl"
    assert error_of(raw) == "eval.type: 'mme' is a vqa benchmark; set 'type: vqa'"


# -- llmc keys we do not support ---------------------------------------------------------------

def test_weight_activation_quant_is_a_section(raw):
    raw["quant"]["act"] = {"bit": 8, "symmetric": True, "granularity": "per_token"}
    assert load_config(raw).quant.act.bit == 8
    raw["quant"]["act"] = {"bit": 1}
    assert error_of(raw) == "quant.act.bit: 1 is out of range; use 2..16"
    raw["quant"]["act"] = {"bit": 8, "granularty": "per_token"}
    assert error_of(raw) == "quant.act.granularty: unknown key; did you mean 'granularity'?"


def test_vision_quant_objects_rejected_with_reason(raw):
    raw["quant"]["quant_objects"] = ["language", "vision"]
    reason = UNSUPPORTED_LLMC_KEYS["quant.quant_objects: vision"].rstrip(".")
    assert error_of(raw) == (f"quant.quant_objects: 'vision' is not supported: {reason}; "
                             "use [language]")


def test_inference_per_block_rejected_with_reason(raw):
    raw["eval"]["inference_per_block"] = True
    reason = UNSUPPORTED_LLMC_KEYS["eval.inference_per_block: True"].rstrip(".")
    assert error_of(raw) == (f"eval.inference_per_block: true is not supported: {reason}; "
                             "set 'inference_per_block: False'")


def test_download_rejected_with_fix(raw):
    raw["calib"]["download"] = True
    message = error_of(raw)
    assert message.startswith("calib.download: true is not supported: ")
    assert message.endswith("set 'download: False' and point 'path' at a local copy")


def test_llmc_export_flags(raw):
    raw["save"]["save_sgl"] = False  # asks for nothing: accepted and dropped
    assert "save_sgl" not in load_config(raw).effective_yaml()
    raw["save"]["save_sgl"] = True
    reason = UNSUPPORTED_LLMC_KEYS["save.save_sgl"].rstrip(".")
    assert error_of(raw) == (f"save.save_sgl: true is not supported: {reason}; "
                             "remove it or set it to false")


def test_supported_export_flags_load(raw):
    raw["quant"]["weight"].update(symmetric=True, bit=4)
    raw["save"]["save_vllm"] = True
    assert load_config(raw).save.save_vllm is True


def test_ignored_llmc_keys_are_accepted(raw):
    raw["model"]["tokenizer_mode"] = "fast"
    raw["eval"]["eval_token_consist"] = True
    cfg = load_config(raw)
    assert cfg.model.tokenizer_mode == "fast" and cfg.evals[0].eval_token_consist is True


# -- effective yaml ----------------------------------------------------------------------------

def test_effective_yaml_round_trips(example_file, tmp_path):
    cfg = load_config(example_file)
    text = cfg.effective_yaml()
    assert list(yaml.safe_load(text)) == ["base", "model", "calib", "eval", "quant", "save", "run"]
    out = tmp_path / "effective.yml"
    out.write_text(text)
    again = load_config(out)
    assert again == cfg
    assert again.effective_yaml() == text


def test_effective_yaml_shows_filled_defaults(raw):
    raw["quant"]["method"] = "GPTQ"
    raw["quant"]["special"] = {}
    del raw["calib"]["seed"]
    data = yaml.safe_load(load_config(raw).effective_yaml())
    assert data["quant"]["special"] == {"actorder": False, "static_groups": False,
                                        "percdamp": 0.01, "blocksize": 128,
                                        "true_sequential": True, "rotate": None, "online_rotate": False}
    assert data["calib"]["seed"] == 42
    assert isinstance(data["eval"], list) and data["eval"][0]["type"] == "vqa"


# -- files -------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.yml"
    assert error_of(path) == f"config file not found: {path}"


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("model:\n    type: Llava\n    path: /m\nquant:\n    method: [Awq\n")
    message = error_of(path)
    assert message.startswith(f"{path}: YAML syntax error at line 6, column 1: ")


def test_yaml_mapping_error_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("model:\n    type: Llava\n    path: /m: x: y\n")
    assert error_of(path) == (f"{path}: YAML syntax error at line 3, column 13: "
                              "mapping values are not allowed here")


def test_duplicate_key_is_an_error(tmp_path):
    path = tmp_path / "dup.yml"
    path.write_text(LLMC_EXAMPLE.replace("        bit: 4\n", "        bit: 4\n        bit: 3\n"))
    line = LLMC_EXAMPLE.splitlines().index("        bit: 4") + 2
    assert error_of(path) == f"{path}: YAML syntax error at line {line}, column 9: duplicate key 'bit'"


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yml"
    path.write_text("- model\n- quant\n")
    assert error_of(path).startswith("a config must be a mapping of sections")


def test_config_error_is_a_value_error_with_path(raw):
    raw["quant"]["weight"]["bit"] = 12
    with pytest.raises(ValueError) as info:
        load_config(raw)
    assert isinstance(info.value, ConfigError)
    assert info.value.path == "quant.weight.bit"


def test_docs_list_exactly_the_unsupported_llmc_keys():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    table = doc.split("## llmc keys deliberately not supported", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")]
    assert rows == list(UNSUPPORTED_LLMC_KEYS)


def test_presets_follow_the_cache_variable(monkeypatch, tmp_path):
    """The presets name the demo zoo through ${LLMC_WIZARD_CACHE:-~/.cache/llmc-wizard}."""
    from pathlib import Path

    from llmc.config import ConfigError, load_config

    preset = Path(__file__).resolve().parents[1] / "configs" / "tiny-llava_w4a16_gptq.yml"
    monkeypatch.setenv("LLMC_WIZARD_CACHE", str(tmp_path / "cache"))
    assert load_config(preset).model.path == str(tmp_path / "cache" / "demo" / "repos" / "tiny-llava")
    monkeypatch.delenv("LLMC_WIZARD_CACHE")
    assert load_config(preset).model.path == str(Path.home() / ".cache/llmc-wizard/demo/repos/tiny-llava")
    with pytest.raises(ConfigError, match=r"model.path.*\$\{NOPE_UNSET\} is not set"):
        load_config({"model": {"type": "Llava", "path": "${NOPE_UNSET}/x"},
                     "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}}})


def test_an_llmc_tpu_config_loads_and_names_what_it_ignores(raw, tmp_path):
    """llmc-tpu configs carry `run: {task_name, task_type}`; keys accepted without effect are said."""
    import subprocess
    import sys

    raw["run"] = {"task_name": "vila_awq_w4a16", "task_type": "VLM"}
    cfg = load_config(raw)
    assert cfg.run.task_name == "vila_awq_w4a16" and cfg.run.task_type == "VLM"
    notes = cfg.notices()
    assert [n.split(":")[0] for n in notes] == ["calib.preproc", "calib.type", "eval.eval_token_consist",
                                                "model.tokenizer_mode", "run"]
    assert all("\n" not in n for n in notes)
    assert "did you mean 'task_name'" in error_of({**raw, "run": {"task_nam": "x"}})
    # a config setting none of them has no notice
    for k in ("tokenizer_mode",):
        raw["model"].pop(k)
    for k in ("preproc", "type"):
        raw["calib"].pop(k)
    raw["eval"].pop("eval_token_consist")
    raw.pop("run")
    assert load_config(raw).notices() == []
    # `llmc check` prints them before its verdict
    path = tmp_path / "tpu.yml"
    path.write_text(LLMC_EXAMPLE + "run:\n    task_name: t\n    task_type: VLM\n")
    r = subprocess.run([sys.executable, "-m", "llmc", "check", str(path)], capture_output=True, text=True, timeout=300)
    assert "llmc: note: run: accepted but informational" in r.stderr
    assert "llmc: note: model.tokenizer_mode: accepted but ignored" in r.stderr
