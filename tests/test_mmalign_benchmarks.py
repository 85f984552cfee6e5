"""mmalign's benchmark protocols against hand-computed examples (POPE, TextVQA, GQA, the judge
prompts' parsing), and the judge client against a local OpenAI-compatible stand-in: retries on
429/500, every answer cached on disk, a malformed answer scored as the published script scores
it and counted (tests/test_mmalign_judges.py: the two judges and the counting)."""
import pytest

from mmablate.errors import DataError
from mmablate.studies.mmalign import protocols as P
from mmablate.studies.mmalign.judge import EndpointJudge, JudgeError

from .conftest import endpoint_judge_cfg


def test_pope_first_sentence_and_scores_by_hand():
    answers = ["Yes, there is a dog in the image.", "No.", "There is not a cat. Yes it is.",
               "Nope, no cat here", "Not sure."]
    preds = [P.pope_parse(a) for a in answers]
    # "Not" (capitalised) is not one of eval_pope.py's words: a "yes"
    assert preds == ["yes", "no", "no", "no", "yes"]
    s = P.pope_scores(preds, ["yes", "no", "yes", "no", "no"])
    # TP 1 (0), FP 1 (4), TN 2 (1, 3), FN 1 (2)
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (1, 1, 2, 1)
    assert s["acc"] == pytest.approx(0.6) and s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5) and s["f1"] == pytest.approx(0.5)
    assert s["yes_ratio"] == pytest.approx(0.4)


def test_textvqa_evalai_normalisation_and_soft_accuracy_by_hand():
    assert P.evalai_normalise("Two.") == "2"
    assert P.evalai_normalise("The Dog") == "dog"
    assert P.evalai_normalise("dont") == "don't"
    assert P.evalai_normalise("1,000") == "1000"
    answers = ["two", "two", "2"] + ["three"] * 7  # normalised: "2" x 3, "3" x 7
    # leave-one-out over the 10: a "2" left out (3 ways) leaves 2 matches -> 2/3; a "3" left
    # out (7 ways) leaves 3 -> 1; mean (3 * 2/3 + 7) / 10 = 0.9
    assert P.textvqa_accuracy("Two.", answers) == pytest.approx(0.9)
    assert P.textvqa_accuracy("3", answers) == pytest.approx(1.0)
    assert P.textvqa_accuracy("four", answers) == 0.0
    # one matching answer of 10: left out once (0 matches), else 1 match -> 1/3; mean 0.3
    assert P.textvqa_accuracy("a cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)


def test_gqa_exact_match_after_llavas_conversion():
    assert P.gqa_correct("Yes.", "yes") and P.gqa_correct(" red . ", "red")
    assert not P.gqa_correct("the red", "red")  # no article stripping in GQA
    assert not P.gqa_correct("left side", "left")


def test_short_answer_instruction_is_llavas():
    from mmablate.studies.mmalign.evaluate import _short

    assert P.SHORT_ANSWER == "Answer the question using a single word or phrase."
    assert _short("What colour?") == "What colour?\nAnswer the question using a single word or phrase."
    world = "what colour ?\nanswer the question using a single word or phrase ."
    assert _short(world) == world


def test_judge_prompts_and_their_parsing():
    msg = P.mmhal_request(["Cat", "Lynx"], "How many?", "Two cats.", "One cat.")[0]["content"]
    assert msg.endswith("### Image Contents\nCat, Lynx\n\n### Question\nHow many?\n\n"
                        "### Standard Human-Generated Answer\nTwo cats.\n\n"
                        "### LMM Response to Evaluate\nOne cat.\n")
    assert "- Rating: 6, very informative with good analysis or reasoning" in msg
    assert P.parse_mmhal("The response is fine.\nRating: 4, somewhat informative") == 4
    with pytest.raises(DataError, match=r"mmhal: question 3: malformed judge answer \(no"):
        P.parse_mmhal("I cannot rate this.", "mmhal", 3)
    with pytest.raises(DataError, match="several"):
        P.parse_mmhal("Rating: 2 ... actually Rating: 5", "mmhal", 3)
    sys_, user = P.llavaw_request(["a cat on a mat"], "What is it?", "A cat.", "A dog.")
    assert sys_["role"] == "system" and user["content"].startswith("[Context]\na cat on a mat\n\n")
    assert "[Assistant 1]\nA cat.\n\n[End of Assistant 1]" in user["content"]
    assert P.parse_llavaw("8 6\nAssistant 1 is better.") == (8.0, 6.0)
    assert P.parse_llavaw("8,6\nAssistant 1 is better.") == (8.0, 6.0)
    # parse_score replaces ',' by ' ' and splits on single spaces: "8, 6" is three fields there
    assert P.read_llavaw("8, 6\nAssistant 1 is better.") is None
    with pytest.raises(DataError, match="llavaw: question q9: malformed"):
        P.parse_llavaw("Assistant 1: 8", "llavaw", "q9")
    assert P.read_llavaw("8 6 \nok") is None  # LLaVA's parse_score splits on single spaces
    q = P.mmvet_request("What is x?", "-1<AND>-5", "x = -1")[0]["content"]
    assert q.endswith("\nWhat is x? | -1 <AND> -5 | x = -1 | ")
    assert P.parse_mmvet("0.5") == 0.5
    with pytest.raises(DataError, match="mmvet: question v1_3"):
        P.parse_mmvet("1.5", "mmvet", "v1_3")
    assert P.mmvet_request("q", "a", "p", retry=True)[0]["content"].endswith(
        " | ".join(["q", "a", "p", ""]) + "\nPredict the correctness of the answer (digit): ")


def _Server(reply, fail=()):
    """The rehearsal's judge stand-in answering `reply(body)` after failing the first requests
    with the given HTTP statuses."""
    from mmablate.rehearsal.judge import JudgeServer

    return JudgeServer(port=0, reply=reply, fail=fail)


def _items(n):
    return [{"qid": i, "image": "unused.png", "question": f"q{i}?", "response": f"r{i}",
             "gt_answer": "gt", "image_content": ["Cat"], "context": None} for i in range(n)]


def test_judge_client_retries_caches_and_names_malformed_answers(tmp_path):
    cfg = lambda url: endpoint_judge_cfg(url, concurrency=3, backoff_s=0.01,  # noqa: E731
                                         retries=3)
    with _Server(lambda b: "Fine.\nRating: 5", fail=[429, 500]) as s:
        j = EndpointJudge(cfg(s.url), cache_dir=tmp_path / "cache")
        assert j.mmhal_many(_items(4)) == [5.0] * 4
        assert j.stats["bench"] == {"requests": 4, "cache_hits": 0, "retries": 2}
        assert len(s.bodies) == 6  # 4 answered + the 429 and the 500
        # MMHal-Bench's script: gpt-4-0314 at temperature 0.0, no max_tokens sent
        assert all(b["model"] == "gpt-4-0314" and b["temperature"] == 0.0
                   and "max_tokens" not in b for b in s.bodies)
        # a rerun re-asks nothing: every answer comes from the disk cache
        j2 = EndpointJudge(cfg(s.url), cache_dir=tmp_path / "cache")
        assert j2.mmhal_many(_items(4)) == [5.0] * 4
        assert j2.stats["bench"]["cache_hits"] == 4 and len(s.bodies) == 6
        assert len(list((tmp_path / "cache").rglob("*.json"))) == 4
    with _Server(lambda b: "It looks good to me.") as s:  # every answer unreadable: fails
        j = EndpointJudge(cfg(s.url), cache_dir=tmp_path / "c2")
        with pytest.raises(JudgeError, match=r"mmhal: 1 of 1 judge answers do not read"):
            j.mmhal_many(_items(1))
    with _Server(lambda b: "x", fail=[503] * 10) as s:
        j = EndpointJudge({**cfg(s.url), "retries": 2}, cache_dir=tmp_path / "c3")
        with pytest.raises(JudgeError, match="HTTP 503.*after 3 tries"):
            j.mmvet_many(_items(1))
    with _Server(lambda b: "x", fail=[400]) as s:  # not a transient error: no retry
        j = EndpointJudge(cfg(s.url), cache_dir=tmp_path / "c4")
        with pytest.raises(JudgeError, match="HTTP 400.*after 1 tries"):
            j.mmvet_many(_items(1))


def test_llavaw_relative_score_and_mmvet_through_the_endpoint(tmp_path):
    from mmablate.studies.mmalign.evaluate import score

    def reply(body):
        text = body["messages"][-1]["content"]
        if text.startswith("[Context]"):
            return "8 6\nAssistant 1 is more accurate."
        return "0.7"

    bench = {"llavaw": [{"qid": i, "image": "x.png", "question": f"q{i}", "gt_answer": "ref",
                         "context": "a caption"} for i in range(2)],
             "mmvet": [{"qid": f"v1_{i}", "image": "x.png", "question": f"m{i}",
                        "gt_answer": "a<OR>b"} for i in range(3)]}
    answers = {("x.png", r["question"]): "resp" for v in bench.values() for r in v}
    with _Server(reply) as s:
        j = EndpointJudge(endpoint_judge_cfg(s.url), cache_dir=tmp_path)
        m, _ = score(bench, answers, j)
    assert m["llavaw"] == pytest.approx(100 * 6 / 8) and m["mmvet"] == pytest.approx(70.0)
    assert m["judge_unparsed_llavaw"] == 0 and m["judge_unparsed_mmvet"] == 0
    ll = [b for b in s.bodies if b["messages"][0]["role"] == "system"]
    # LLaVA-Bench's review: gpt-4-0314, temperature 0.2, max_tokens 1024
    assert len(ll) == 2 and {(b["model"], b["temperature"], b["max_tokens"]) for b in ll} == \
        {("gpt-4-0314", 0.2, 1024)}
    mv = [b for b in s.bodies if b["messages"][0]["role"] != "system"]
    assert {(b["model"], b["temperature"], b["max_tokens"]) for b in mv} == {("gpt-4-0613", 0.0, 3)}
    assert "[Context]\na caption\n\n[Question]\nq" in ll[0]["messages"][1]["content"]
