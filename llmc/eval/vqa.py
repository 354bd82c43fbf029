"""Visual question answering through lmms-eval's Python API, on local MME-format sets.

A model takes part through an *answer function*: ``answer(requests) -> list[str]`` where each
request is a :class:`VQARequest` (prompt text, PIL images, generation settings). Adapters
provide one; :class:`LlmcLMM` turns it into an lmms-eval ``lmms`` model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmms_eval.api.model import lmms

from .mme import MMEScores, load_dataset, normalize_answer, score_answers, write_task


@dataclass
class VQARequest:
    context: str
    images: list = field(default_factory=list)
    gen_kwargs: dict = field(default_factory=dict)

    @property
    def max_new_tokens(self) -> int:
        return int(self.gen_kwargs.get("max_new_tokens", 8))


AnswerFn = Callable[[Sequence[VQARequest]], list]
ProgressFn = Callable[[int, int], None]


class LlmcLMM(lmms):
    """An lmms-eval model around an answer function, batching requests by ``batch_size``."""

    def __init__(self, answer_fn: AnswerFn, batch_size: int = 16, progress: ProgressFn | None = None,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        self.answer_fn = answer_fn
        self.batch_size_per_gpu = int(batch_size)
        self.progress = progress
        self._rank = rank
        self._world_size = world_size

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def generate_until(self, requests) -> list[str]:
        out: list[str] = []
        total = len(requests)
        for start in range(0, total, self.batch_size_per_gpu):
            chunk = requests[start:start + self.batch_size_per_gpu]
            batch = []
            for req in chunk:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
                batch.append(VQARequest(context, list(visuals or []), dict(gen_kwargs or {})))
            answers = self.answer_fn(batch)
            if len(answers) != len(batch):
                raise RuntimeError(f"answer function returned {len(answers)} answers for {len(batch)} requests")
            out.extend(str(a) for a in answers)
            if self.progress:
                self.progress(len(out), total)
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("llmc's VQA models answer generate_until tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("llmc's VQA models answer single-round tasks only")


@dataclass
class VQAResult:
    scores: MMEScores
    lmms_total: float  # lmms-eval's own aggregate, perception + cognition
    predictions: list[dict]


def evaluate_mme(answer_fn: AnswerFn, dataset_path: Path, *, batch_size: int = 16, limit: int | None = None,
                 task_name: str = "llmc_local_mme", max_new_tokens: int = 8,
                 progress: ProgressFn | None = None) -> VQAResult:
    """Run lmms-eval on a local MME-format dataset; per-category MME scores.

    ``limit`` keeps the first ``limit`` images (two questions each), so pairs stay whole.
    """
    import logging

    from lmms_eval import evaluator  # heavy; keep it out of module import
    from lmms_eval.tasks import TaskManager

    dataset_path = Path(dataset_path)
    ds = load_dataset(dataset_path)  # validates the layout, gives a clear error early
    n_rows = len(ds) if limit is None else min(len(ds), 2 * int(limit))
    with tempfile.TemporaryDirectory(prefix="llmc-task-") as tmp:
        data_dir = dataset_path
        if not (dataset_path / "dataset_dict.json").exists() or n_rows < len(ds):
            from datasets import DatasetDict

            data_dir = Path(tmp) / "data"
            DatasetDict({"test": ds.select(range(n_rows))}).save_to_disk(str(data_dir))
        write_task(Path(tmp) / "task", task_name, data_dir, max_new_tokens)
        tm = TaskManager(include_path=str(Path(tmp) / "task"), include_defaults=False)
        lmm = LlmcLMM(answer_fn, batch_size=batch_size, progress=progress)
        logging.getLogger("lmms-eval").setLevel(logging.WARNING)
        res = evaluator.simple_evaluate(
            model=lmm, tasks=[task_name], task_manager=tm, log_samples=True, batch_size=batch_size,
            verbosity="WARNING",
        )
    if res is None:
        raise RuntimeError("lmms-eval returned no results")
    samples = res["samples"][task_name]
    rows, preds = [], []
    for s in samples:
        entry = s.get("mme_perception_score") or s.get("mme_cognition_score")
        rows.append((entry["question_id"], entry["category"], entry["score"] == 1.0))
        doc = s["doc"]
        pred = s["filtered_resps"][0] if s.get("filtered_resps") else s["resps"][0][0]
        preds.append({"question_id": doc["question_id"], "category": doc["category"],
                      "question": doc["question"], "answer": doc["answer"], "prediction": pred,
                      "parsed": normalize_answer(pred)})
    agg = res["results"][task_name]
    lmms_total = sum(v for k, v in agg.items()
                     if k.split(",")[0] in ("mme_perception_score", "mme_cognition_score") and isinstance(v, (int, float)))
    return VQAResult(score_answers(rows), lmms_total, preds)
