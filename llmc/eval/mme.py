"""MME-format evaluation sets: the scoring formula, local lmms-eval tasks, dataset I/O.

An MME-format set is a table with ``question_id`` (the image id; exactly two rows per image,
one whose answer is Yes and one whose answer is No), ``image``, ``question``, ``answer`` and
``category``. A category's score is the mean over its images of ``acc + acc_plus`` (max 200),
where ``acc`` is the percentage of the image's two questions answered right and ``acc_plus``
is 100 when both are right.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SPLIT = "test"


@dataclass
class MMEScores:
    categories: dict[str, float] = field(default_factory=dict)
    n_images: dict[str, int] = field(default_factory=dict)

    @property
    def perception(self) -> float:
        return sum(v for k, v in self.categories.items() if k not in COGNITION)

    @property
    def cognition(self) -> float:
        return sum(v for k, v in self.categories.items() if k in COGNITION)

    @property
    def total(self) -> float:
        return self.perception + self.cognition

    def to_dict(self) -> dict:
        return {
            "categories": dict(self.categories),
            "n_images": dict(self.n_images),
            "perception": self.perception,
            "cognition": self.cognition,
            "total": self.total,
        }

    @classmethod
    def from_dict(cls, d: dict) -> MMEScores:
        return cls(dict(d["categories"]), dict(d.get("n_images", {})))


def score_answers(rows) -> MMEScores:
    """``rows``: iterable of ``(question_id, category, correct)``; MME's pair formula."""
    per_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for qid, category, correct in rows:
        per_image[category][qid].append(bool(correct))
    scores = MMEScores()
    for category in sorted(per_image):
        images = per_image[category]
        total = 0.0
        for qid, oks in images.items():
            if len(oks) != 2:
                raise ValueError(f"MME needs exactly two questions per image; {qid!r} has {len(oks)}")
            total += 100.0 * sum(oks) / 2 + 100.0 * all(oks)
        scores.categories[category] = total / len(images)
        scores.n_images[category] = len(images)
    return scores


def normalize_answer(text: str) -> str:
    """``yes``/``no``/``other`` exactly as lmms-eval's MME task parses a prediction."""
    pred = text.lower().strip().replace(".", "")
    if pred in ("yes", "no"):
        return pred
    if len(pred) == 1:
        return {"y": "yes", "n": "no"}.get(pred, "other")
    head = pred[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


# ---------------------------------------------------------------------------------------------
# local lmms-eval task

_UTILS = '''\
"""lmms-eval helpers for a local MME-format task (the stock MME functions)."""
from lmms_eval.tasks.mme.utils import (  # noqa: F401
    mme_aggregate_results,
    mme_doc_to_text,
    mme_doc_to_visual,
    mme_process_results,
)
'''


def task_yaml(task_name: str, dataset_path: Path, max_new_tokens: int = 8) -> str:
    path = str(Path(dataset_path).resolve()).replace("'", "''")
    return textwrap.dedent(f"""\
        task: {task_name}
        dataset_path: '{path}'
        dataset_kwargs:
          load_from_disk: true
        test_split: {SPLIT}
        output_type: generate_until
        doc_to_visual: !function utils.mme_doc_to_visual
        doc_to_text: !function utils.mme_doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: {max_new_tokens}
          temperature: 0
          top_p: 1.0
          num_beams: 1
          do_sample: false
        process_results: !function utils.mme_process_results
        metric_list:
          - metric: mme_perception_score
            aggregation: !function utils.mme_aggregate_results
            higher_is_better: true
          - metric: mme_cognition_score
            aggregation: !function utils.mme_aggregate_results
            higher_is_better: true
        lmms_eval_specific_kwargs:
          default:
            pre_prompt: ""
            post_prompt: ""
        metadata:
          - version: 0.0
        """)


def write_task(task_dir: Path, task_name: str, dataset_path: Path, max_new_tokens: int = 8) -> Path:
    """Write ``<task_name>.yaml`` and ``utils.py`` into ``task_dir``; returns the yaml path."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "utils.py").write_text(_UTILS)
    yml = task_dir / f"{task_name}.yaml"
    yml.write_text(task_yaml(task_name, dataset_path, max_new_tokens))
    return yml


def write_dataset(out_dir: Path, rows: list[dict]) -> Path:
    """Save MME rows (``image`` as PIL) as a ``datasets`` folder with one ``test`` split."""
    import datasets

    features = datasets.Features({
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "category": datasets.Value("string"),
    })
    cols = {k: [r[k] for r in rows] for k in features}
    ds = datasets.Dataset.from_dict(cols, features=features)
    datasets.DatasetDict({SPLIT: ds}).save_to_disk(str(out_dir))
    return Path(out_dir)


def load_dataset(path: Path):
    """The ``test`` split of an MME-format folder (``save_to_disk`` layout or parquet files)."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MME dataset not found: {path}")
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))[SPLIT]
    parquet = sorted(path.rglob("*.parquet"))
    if parquet:
        return datasets.load_dataset("parquet", data_files=[str(p) for p in parquet], split="train")
    raise ValueError(
        f"{path} is not an MME-format dataset: expected a `datasets.save_to_disk` folder "
        "(with dataset_dict.json) or parquet files"
    )
