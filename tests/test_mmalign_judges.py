"""mmalign's two judges (issue 23): paper.yaml's `judge.rank` and `judge.bench` with the
benchmarks' published models and settings, the refusal of the old single `judge:` block, each
benchmark's reading of its judge's reply (parsed; unparsed → the published script's score,
counted, the job failing only past `judge.bench.max_unparsed`) and the cache keyed by each
role's model and temperature."""
import copy

import pytest

from mmablate.config import load
from mmablate.errors import ConfigError
from mmablate.pipeline import Pipeline
from mmablate.rehearsal.judge import JudgeServer
from mmablate.studies.mmalign import protocols as P
from mmablate.studies.mmalign.evaluate import score
from mmablate.studies.mmalign.judge import (EndpointJudge, JudgeError, OracleJudge,
                                            bench_settings, check_config)
from mmablate.world.scenes import Obj, Scene

from .conftest import REPO, endpoint_judge_cfg, with_ablations

PAPER = ["config/config.yaml", "config/scales/paper.yaml"]
ONLY = {"studies": {s: {"enabled": False} for s in ("rankclip", "pcclip", "pairrank")}}


def _paper(*overlays):
    from mmablate.config import merge

    c = load([REPO / f for f in PAPER])
    for o in (ONLY,) + overlays:
        merge(c, copy.deepcopy(o))
    return with_ablations(c)


def _items(bench, n):
    return [{"qid": f"{bench}{i}", "image": "x.png", "question": f"{bench} q{i}?",
             "response": f"r{i}", "gt_answer": "gt", "image_content": ["Cat"], "context": "c"}
            for i in range(n)]


# ---- the config ------------------------------------------------------------------------------
def test_paper_yaml_names_two_judges_with_the_published_settings():
    j = load([REPO / f for f in PAPER])["studies"]["mmalign"]["judge"]
    assert j["kind"] == "endpoint" and j["model"] is None
    assert j["rank"]["model"] == "llava-hf/llava-v1.6-34b-hf"  # the paper's online-pair judge
    assert {b: bench_settings(j["bench"], b) for b in ("mmhal", "llavaw", "mmvet")} == {
        "mmhal": {"model": "gpt-4-0314", "temperature": 0.0, "max_tokens": None},
        "llavaw": {"model": "gpt-4-0314", "temperature": 0.2, "max_tokens": 1024},
        "mmvet": {"model": "gpt-4-0613", "temperature": 0.0, "max_tokens": 3}}
    assert j["bench"]["max_unparsed"] == 0.05
    text = (REPO / "config/scales/paper.yaml").read_text()
    for src in ("Eval/eval_gpt_mmhal.py", "llava/eval/eval_gpt_review_bench.py",
                "mm-vet_evaluator.py"):  # each published value says where it comes from
        assert src in text
    # a model (or temperature) set on judge.bench applies to all three benchmarks
    one = bench_settings({**j["bench"], "model": "Qwen/Qwen2-72B-Instruct"}, "mmvet")
    assert one == {"model": "Qwen/Qwen2-72B-Instruct", "temperature": 0.0, "max_tokens": 3}


def test_the_tiny_scale_keeps_its_oracle_judge():
    """config.yaml's judge is unchanged (its stages' hashes and tables stay as they are)."""
    j = load([REPO / "config/config.yaml"])["studies"]["mmalign"]["judge"]
    assert j == {"kind": "oracle", "model": "world-oracle"}
    check_config(j, "studies.mmalign.judge", "world")
    # the oracle's scores carry no unparsed counts: the world's records are unchanged
    scenes = {"x.png": Scene((Obj("circle", "red", "large", 0.2, 0.5),))}
    bench = {"mmhal": [{"qid": 0, "image": "x.png", "question": "describe the image .",
                        "gt_answer": "there is a large red circle on the left ."}]}
    m, _ = score(bench, {("x.png", "describe the image ."): "there is a red circle ."},
                 OracleJudge(scenes))
    assert not [k for k in m if k.startswith("judge_unparsed")]


def test_both_roles_planned_with_their_endpoints(tmp_path):
    url = {"rank": "http://rank:8000/v1", "bench": "http://bench:8000/v1"}
    c = _paper({"studies": {"mmalign": {"judge": {r: {"endpoint": u} for r, u in url.items()}}}})
    P_ = Pipeline(c, results=str(tmp_path), write=False)
    dpo = next(iter(P_.stages["mmalign_dpo"].values()))
    assert dpo["judge"]["rank"]["endpoint"] == url["rank"]
    bench = next(iter(P_.stages["mmalign_bench"].values()))
    assert bench["eval"]["judge"]["bench"]["endpoint"] == url["bench"]
    assert bench["eval"]["judge_cache"] == f"{tmp_path}/mmalign/judge_cache"


@pytest.mark.parametrize("old", [
    {"endpoint": "http://judge:8000/v1"},
    {"endpoint": "http://judge:8000/v1", "model": "gpt-4"},
    {"model": "gpt-4-0314"},
    {"api_key_env": "MY_KEY"}])
def test_the_old_single_judge_block_is_refused_saying_what_to_write(old, tmp_path):
    overlay = tmp_path / "mine.yaml"
    import yaml

    overlay.write_text(yaml.safe_dump({**ONLY, "studies": {**ONLY["studies"],
                                                           "mmalign": {"judge": old}}}))
    files = [REPO / f for f in PAPER] + [overlay]
    c = with_ablations(load(files))
    key = next(iter(old))
    with pytest.raises(ConfigError) as e:
        Pipeline(c, [str(f) for f in files], write=False)
    msg = str(e.value)
    assert str(overlay) in msg and f"studies.mmalign.judge.{key}: the single judge block" in msg
    assert "judge.rank: {endpoint, model, temperature, max_tokens, api_key_env}" in msg
    assert "judge.bench: {endpoint, api_key_env, max_unparsed" in msg


def test_judge_config_errors_name_the_key():
    j = endpoint_judge_cfg("http://x/v1")
    bad = copy.deepcopy(j)
    bad["bench"]["mmvet"]["model"] = None
    with pytest.raises(ConfigError, match=r"judge.bench.mmvet.model: not set"):
        check_config(bad)
    bad = copy.deepcopy(j)
    del bad["rank"]
    with pytest.raises(ConfigError, match=r"judge.rank: missing; the endpoint judge needs both"):
        check_config(bad)
    with pytest.raises(ConfigError, match="the oracle judge only knows the synthetic world"):
        check_config({"kind": "oracle"}, "studies.mmalign.judge", "files")


# ---- each benchmark's reading of its judge's replies ----------------------------------------
def _judge(url, share=1.0, tmp_path=None, **bench):
    cfg = endpoint_judge_cfg(url, backoff_s=0.01, concurrency=2)
    cfg["bench"].update(max_unparsed=share, **bench)
    return EndpointJudge(cfg, cache_dir=tmp_path)


def _answer_by_question(table):
    """A stand-in reply: `table[question]` (a reply, or a function of the request body)."""
    def reply(body):
        text = body["messages"][-1]["content"]
        for q, r in table.items():
            if q in text:
                return r(body) if callable(r) else r
        raise AssertionError(text[-200:])
    return reply


def test_mmhal_unread_rating_scores_0_counted():
    """eval_gpt_mmhal.py: exactly one 'rating: k' in the lower-cased reply, else 0."""
    assert P.read_mmhal("Explanation.\nRATING: 5, very informative") == 5
    assert P.read_mmhal("Rating: 2 at first, Rating: 5 then") is None
    assert P.read_mmhal("I would rate it five.") is None
    items = _items("mmhal", 3)
    table = {"mmhal q0?": "Good.\nRating: 4", "mmhal q1?": "Rating: 2 or Rating: 5",
             "mmhal q2?": "No rating here."}
    bench = {"mmhal": items}
    answers = {("x.png", it["question"]): it["response"] for it in items}
    with JudgeServer(port=0, reply=_answer_by_question(table)) as s:
        m, _ = score(bench, answers, _judge(s.url))
        assert m["mmhal"] == pytest.approx(4 / 3) and m["judge_unparsed_mmhal"] == 2
        assert m["mmhalv"] == pytest.approx(100 * 2 / 3)  # 0 < 3: counted as hallucinated
        with pytest.raises(JudgeError, match=r"judge.bench.max_unparsed: mmhal: 2 of 3 judge "
                                             r"answers do not read \(questions \['mmhal1', "
                                             r"'mmhal2'\]"):
            score(bench, answers, _judge(s.url, share=0.5))


def test_llavaw_unread_pair_is_minus_one_in_both_means():
    """eval_gpt_review_bench.py parse_score: [-1, -1], averaged in by summarize_gpt_review.py."""
    assert P.read_llavaw("7 9\nbecause") == (7.0, 9.0)
    assert P.read_llavaw("7,9") == (7.0, 9.0)
    assert P.read_llavaw("7, 9") is None and P.read_llavaw("Assistant 1: 7") is None
    assert P.read_llavaw("seven nine") is None
    items = _items("llavaw", 3)
    table = {"llavaw q0?": "8 6\nok", "llavaw q1?": "8 4\nok", "llavaw q2?": "8, 6\nok"}
    answers = {("x.png", it["question"]): it["response"] for it in items}
    with JudgeServer(port=0, reply=_answer_by_question(table)) as s:
        m, _ = score({"llavaw": items}, answers, _judge(s.url))
    assert m["judge_unparsed_llavaw"] == 1
    assert m["llavaw"] == pytest.approx(100 * (6 + 4 - 1) / (8 + 8 - 1))


def test_mmvet_reasks_as_its_evaluator_then_scores_0():
    """mm-vet_evaluator.py: an unread grade is asked again with 'Predict the correctness of the
    answer (digit): ' appended, at the same temperature and then +0.5 each; four re-asks are
    read, then the grade is 0.0."""
    assert P.read_mmvet("0.7") == 0.7 and P.read_mmvet("1.0 ok") == 1.0
    assert P.read_mmvet(" 0.7") is None  # split(" ")[0] is empty
    assert P.read_mmvet("1.5") is None and P.read_mmvet("N/A") is None
    items = _items("mmvet", 3)

    def late(body):  # reads only at the third re-ask's temperature (1.0)
        return "0.6" if body["temperature"] == 1.0 else "N/A"

    table = {"mmvet q0?": "0.3", "mmvet q1?": late, "mmvet q2?": "N/A"}
    answers = {("x.png", it["question"]): it["response"] for it in items}
    with JudgeServer(port=0, reply=_answer_by_question(table)) as s:
        m, _ = score({"mmvet": items}, answers, _judge(s.url))
    assert m["judge_unparsed_mmvet"] == 1
    assert m["mmvet"] == pytest.approx(100 * (0.3 + 0.6 + 0.0) / 3)
    asked = {q: [(b["temperature"], b["messages"][0]["content"].endswith(P.MMVET_RETRY))
                 for b in s.bodies if f"\n{q} |" in b["messages"][0]["content"]]
             for q in ("mmvet q0?", "mmvet q1?", "mmvet q2?")}
    assert asked["mmvet q0?"] == [(0.0, False)]
    assert sorted(asked["mmvet q1?"]) == [(0.0, False), (0.0, True), (0.5, True), (1.0, True)]
    assert sorted(asked["mmvet q2?"]) == [(0.0, False), (0.0, True), (0.5, True), (1.0, True),
                                          (1.5, True)]
    assert all(b["max_tokens"] == 3 and b["model"] == "gpt-4-0613" for b in s.bodies)


# ---- the cache -------------------------------------------------------------------------------
def test_cache_is_keyed_by_each_roles_model_and_temperature(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    pair = [(str(tmp_path / "x.png"), "q?", "r", "gt")]
    items = _items("mmhal", 2)

    def run(edit=lambda c: None):
        cfg = endpoint_judge_cfg(s.url)
        edit(cfg)
        e = EndpointJudge(cfg, cache_dir=tmp_path / "cache")
        e.mmhal_many(items)
        e.rank_many(pair)
        return e.stats["bench"]["requests"], e.stats["rank"]["requests"]

    with JudgeServer(port=0) as s:
        assert run() == (2, 1)
        assert run() == (0, 0)  # all from the cache
        assert run(lambda c: c["rank"].update(model="another-ranker")) == (0, 1)
        assert run(lambda c: c["rank"].update(temperature=0.7)) == (0, 1)
        assert run(lambda c: c["bench"]["mmhal"].update(temperature=0.5)) == (2, 0)
        assert run(lambda c: c["bench"]["mmhal"].update(model="gpt-4o")) == (2, 0)
        assert run(lambda c: c["bench"].update(model="one-for-all")) == (2, 0)
        assert run() == (0, 0)
    assert {b["model"] for b in s.bodies} >= {"another-ranker", "gpt-4o", "one-for-all"}


def test_a_share_past_one_is_the_schemas_error_naming_the_key(tmp_path):
    import yaml

    overlay = tmp_path / "mine.yaml"
    overlay.write_text(yaml.safe_dump({"studies": {"mmalign": {"judge": {"bench": {
        "max_unparsed": 1.5}}}}}))
    files = [REPO / f for f in PAPER] + [overlay]
    c = with_ablations(load(files))
    with pytest.raises(ConfigError) as e:
        Pipeline(c, [str(f) for f in files], write=False)
    assert "judge.bench.max_unparsed" in str(e.value) and str(overlay) in str(e.value)
