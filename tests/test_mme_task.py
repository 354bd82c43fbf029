"""The MME-format evaluation set through lmms-eval's real task machinery."""

import pytest

from llmc.eval.mme import load_dataset, normalize_answer, score_answers
from llmc.eval.vqa import evaluate_mme

pytestmark = pytest.mark.slow


def _formula(rows, predict):
    """MME's formula written out independently: per category mean over images of acc + acc_plus."""
    by_cat = {}
    for r in rows:
        ok = predict(r) == r["answer"]
        by_cat.setdefault(r["category"], {}).setdefault(r["question_id"], []).append(ok)
    return {c: sum(50 * sum(v) + 100 * all(v) for v in imgs.values()) / len(imgs) for c, imgs in by_cat.items()}


def test_always_yes_scores_exactly_the_formula(zoo):
    data = zoo.eval_set / "data"
    rows = [dict(question_id=r["question_id"], answer=r["answer"], category=r["category"])
            for r in load_dataset(data).remove_columns("image")]
    res = evaluate_mme(lambda reqs: ["Yes"] * len(reqs), data, batch_size=128)
    expected = _formula(rows, lambda r: "Yes")
    assert res.scores.categories == pytest.approx(expected)
    assert res.scores.categories == pytest.approx({c: 50.0 for c in ("existence", "count", "color", "position")})
    assert res.scores.total == pytest.approx(200.0)
    assert res.lmms_total == pytest.approx(res.scores.total)
    assert len(res.predictions) == 2 * 512


def test_partly_right_model_matches_formula_and_lmms_aggregate(zoo):
    """Right on every third question: acc and acc_plus both move, by category."""
    data = zoo.eval_set / "data"
    ds = load_dataset(data).remove_columns("image")
    truth = {(r["question_id"], r["question"]): r["answer"] for r in ds}

    def answer(reqs):
        out = []
        for r in reqs:
            key = next(k for k in truth if k[1] == r.context)  # questions are unique per image pair
            good = hash(key[0]) % 3 == 0 or r.context.startswith("Is the")
            out.append(truth[key] if good else ("No" if truth[key] == "Yes" else "Yes"))
        return out

    res = evaluate_mme(answer, data, batch_size=64, limit=128)
    rows = [dict(question_id=r["question_id"], answer=r["answer"], category=r["category"], question=r["question"])
            for r in ds.select(range(256))]
    expected = _formula(rows, lambda r: answer([type("R", (), {"context": r["question"]})()])[0])
    assert res.scores.categories == pytest.approx(expected)
    assert res.scores.categories["position"] == pytest.approx(200.0)
    assert res.lmms_total == pytest.approx(res.scores.total)


def test_score_answers_rejects_broken_pairs():
    with pytest.raises(ValueError, match="exactly two questions"):
        score_answers([("a", "count", True)])


@pytest.mark.parametrize("text,label", [("Yes", "yes"), ("no.", "no"), ("Yes, it is", "yes"), ("n", "no"), ("maybe", "other")])
def test_normalize_answer_matches_lmms_eval(text, label):
    from lmms_eval.tasks.mme.utils import parse_pred_ans

    assert normalize_answer(text) == label == parse_pred_ans(text)
