"""Visual question answering through lmms-eval's Python API, on local MME-format sets.

A model takes part through an *answer function*: ``answer(requests) -> list[str]`` where each
request is a :class:`VQARequest` (prompt text, PIL images, generation settings). Adapters
provide one; :class:`LlmcLMM` turns it into an lmms-eval ``lmms`` model.
"""

from __future__ import annotations

import os
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
    """An lmms-eval model around an answer function, batching requests by ``batch_size``.

    For data-parallel runs, pass ``rank``/``world_size`` and an ``accelerator``
    (``accelerate.Accelerator``): lmms-eval's evaluator calls ``accelerator.gather`` on a tensor
    placed on ``self.device`` and ``accelerator.wait_for_everyone()``. ``answered`` counts the
    real requests this process answered (lmms-eval's rank-padding requests are not sent to the
    answer function: they get an empty answer and are discarded by lmms-eval anyway).
    """

    def __init__(self, answer_fn: AnswerFn, batch_size: int = 16, progress: ProgressFn | None = None,
                 rank: int = 0, world_size: int = 1, accelerator=None, device=None):
        super().__init__()
        self.answer_fn = answer_fn
        self.batch_size_per_gpu = int(batch_size)
        self.progress = progress
        self._rank = rank
        self._world_size = world_size
        if accelerator is not None:
            self.accelerator = accelerator
        self._device = device
        self.answered = 0

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def device(self):
        """Where lmms-eval puts its bookkeeping tensors (the per-rank request counts it gathers)."""
        import torch

        if self._device is not None:
            return torch.device(self._device)
        acc = getattr(self, "accelerator", None)
        return acc.device if acc is not None else torch.device("cpu")

    def generate_until(self, requests) -> list[str]:
        out: list[str] = [""] * len(requests)
        real = [i for i, req in enumerate(requests)
                if not (getattr(req, "metadata", None) or {}).get("__padding_only__")]
        total = len(real)
        done = 0
        for start in range(0, total, self.batch_size_per_gpu):
            idx = real[start:start + self.batch_size_per_gpu]
            batch = []
            for i in idx:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = requests[i].args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
                batch.append(VQARequest(context, list(visuals or []), dict(gen_kwargs or {})))
            answers = self.answer_fn(batch)
            if len(answers) != len(batch):
                raise RuntimeError(f"answer function returned {len(answers)} answers for {len(batch)} requests")
            for i, a in zip(idx, answers):
                out[i] = str(a)
            done += len(batch)
            self.answered += len(batch)
            if self.progress:
                self.progress(done, total)
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


def env_world_size() -> int:
    """The process count a launcher (``accelerate launch``, ``torchrun``) gave this process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


_DP_CPU: bool | None = None


def init_distributed(cpu: bool | None = None):
    """Join the launcher's process group (gloo on CPU, nccl on CUDA) through accelerate.

    Returns an ``accelerate.Accelerator`` bound to this process (its ``device`` is
    ``cuda:LOCAL_RANK`` on GPUs, else cpu). ``cpu=None`` means "CPU when CUDA is unavailable";
    accelerate only picks its MULTI_CPU (gloo) mode when told ``cpu=True`` -- without it a
    CUDA-less process under torchrun silently runs as a lone single process. The first call
    fixes the choice; later calls reuse it.
    """
    global _DP_CPU
    import torch
    from accelerate import Accelerator, PartialState

    if _DP_CPU is None:
        _DP_CPU = (not torch.cuda.is_available()) if cpu is None else bool(cpu)
    PartialState(cpu=_DP_CPU)  # initialises torch.distributed from the launcher's environment
    acc = Accelerator(cpu=_DP_CPU)
    if env_world_size() > 1 and acc.num_processes != env_world_size():
        raise RuntimeError(f"launcher says WORLD_SIZE={env_world_size()} but accelerate joined "
                           f"{acc.num_processes} process(es) ({acc.distributed_type})")
    return acc


class _MaskedLaunchEnv:
    """Hide a launcher's WORLD_SIZE/RANK so lmms-eval runs the whole set in this process."""

    KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.KEYS}
        os.environ.update(WORLD_SIZE="1", RANK="0")
        os.environ.pop("LOCAL_RANK", None)  # accelerate would try to join a group when it is set
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def evaluate_mme(answer_fn: AnswerFn, dataset_path: Path, *, batch_size: int = 16, limit: int | None = None,
                 task_name: str = "llmc_local_mme", max_new_tokens: int = 8,
                 progress: ProgressFn | None = None, distributed: bool | None = None,
                 stats: dict | None = None) -> VQAResult | None:
    """Run lmms-eval on a local MME-format dataset; per-category MME scores.

    ``limit`` keeps the first ``limit`` images (two questions each), so pairs stay whole.

    ``distributed``: ``None`` (default) means "data-parallel when a launcher started several
    processes" (env ``WORLD_SIZE`` > 1, as ``accelerate launch`` and ``torchrun`` set it).
    Data-parallel: every process must call this with the same arguments; the process group is
    joined through accelerate (gloo on CPU, nccl on CUDA), lmms-eval gives rank ``r`` the
    documents ``r, r + N, r + 2N, ...`` and gathers the logged samples and metrics to rank 0.
    Rank 0 returns the :class:`VQAResult` (identical to a single-process run on the same set,
    predictions ordered by document); **other ranks return ``None``**. ``distributed=False``
    under a launcher makes every process evaluate the whole set alone.

    ``stats``, when given, receives ``rank``, ``world_size`` and ``answered`` (requests this
    process sent to ``answer_fn``).
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
        if distributed is None:
            distributed = env_world_size() > 1
        if distributed and env_world_size() > 1:
            acc = init_distributed()
            lmm = LlmcLMM(answer_fn, batch_size=batch_size, progress=progress,
                          rank=acc.process_index, world_size=acc.num_processes, accelerator=acc)
            masked = None
        else:
            lmm = LlmcLMM(answer_fn, batch_size=batch_size, progress=progress)
            masked = _MaskedLaunchEnv() if env_world_size() > 1 else None
        logging.getLogger("lmms-eval").setLevel(logging.WARNING)
        if masked:
            masked.__enter__()
        try:
            res = evaluator.simple_evaluate(
                model=lmm, tasks=[task_name], task_manager=tm, log_samples=True, batch_size=batch_size,
                verbosity="WARNING", distributed_executor_backend="accelerate",
            )
        finally:
            if masked:
                masked.__exit__(None, None, None)
    if stats is not None:
        stats.update(rank=lmm.rank, world_size=lmm.world_size, answered=lmm.answered)
    if lmm.rank != 0:
        return None
    if res is None:
        raise RuntimeError("lmms-eval returned no results")
    samples = sorted(res["samples"][task_name], key=lambda s: s["doc_id"])
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
