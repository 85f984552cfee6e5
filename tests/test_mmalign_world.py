"""mmalign: the world's texts, oracle judge, data formats/loaders and bad-input errors."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from mmablate.errors import ConfigError, DataError
from mmablate.studies.mmalign import data as D
from mmablate.studies.mmalign.judge import EndpointJudge, OracleJudge, short_answer_score
from mmablate.studies.mmalign.worlddata import write_mmalign_world
from mmablate.world.scenes import Obj, Scene
from mmablate.world.vqa import (BiasedSampler, companions, describe, hallucinate, judge,
                                mmhal_score, pope_parse)

from .conftest import endpoint_judge_cfg

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
WCFG = dict(seed=3, colours=COLOURS, shapes=SHAPES, max_objects=2, glyph_prob=0.5, cooccur=0.6,
            image_size=32, n_sft=6, n_pref=8, n_eval=5, pref_yesno_frac=0.3)


def scene():
    return Scene((Obj("circle", "red", "large", 0.2, 0.5), Obj("square", "blue", "small", 0.8, 0.5)))


def test_oracle_counts_hallucinated_and_missed_objects():
    s = scene()
    assert describe(s) == ("there is a large red circle on the left . "
                           "there is a small blue square on the right .")
    j = judge(describe(s), s)
    assert (j.hallucinated, j.missed, j.mentioned) == (0, 0, 2)
    j = judge("there is a large red circle on the left . there is a green triangle .", s)
    assert (j.hallucinated, j.missed, j.mentioned) == (1, 1, 1)
    # a wrong attribute of a present object is a hallucination, not a new object
    j = judge("there is a small red circle on the right .", s)
    assert (j.hallucinated, j.missed) == (1, 1)
    # negated sentences mention nothing
    assert judge("no , there is no green triangle .", s).hallucinated == 0
    assert mmhal_score(judge(describe(s), s)) == 6
    assert mmhal_score(judge("there is a large red circle .", s)) == 5  # 3 + round(3 * 0.5)
    assert mmhal_score(judge("there is a green cross .", s)) == 0


def test_pope_parse_is_llavas_rule():
    assert pope_parse("yes , there is a red circle .") == "yes"
    assert pope_parse("no , there is no red circle .") == "no"
    assert pope_parse("there is not a circle. no") == "no"
    assert pope_parse("the answer. no") == "yes"  # only the first sentence counts


def test_hallucinate_always_differs_and_is_judged_hallucinated():
    rng = np.random.default_rng(0)
    s = scene()
    for _ in range(50):
        rej = hallucinate(s, rng, COLOURS, SHAPES)
        assert rej != describe(s)
        assert judge(rej, s).hallucinated >= 1


def test_cooccurrence_bias():
    rng = np.random.default_rng(1)
    smp = BiasedSampler(COLOURS, SHAPES, 2, 0.0, cooccur=0.9)
    comp = companions(tuple(COLOURS), tuple(SHAPES))
    pairs = [s for s in (smp.scene(rng, n_objects=2) for _ in range(200)) if len(s.objects) == 2]
    hit = np.mean([(s.objects[1].colour, s.objects[1].shape) == comp[s.objects[0].shape]
                   for s in pairs])
    assert hit > 0.8


def test_short_answer_score():
    assert short_answer_score("the circle is red .", "the circle is red .") == 1
    assert short_answer_score("the circle is blue .", "the circle is red .",
                              "what colour is the circle ?") == 0
    assert short_answer_score("red", "red") == 1
    assert short_answer_score("the red circle is on the top .",
                              "the red circle is on the left .") == pytest.approx(2 / 3)
    assert short_answer_score("the red circle is on the top .", "the red circle is on the left .",
                              "where is the red circle ?") == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("mmaworld")
    summary = write_mmalign_world(WCFG, d)
    return d, summary


def test_world_files_load_with_the_real_format_loaders(world):
    d, summary = world
    I = d / "images"
    sft = D.load_llava_instruct(d / "sft/llava_instruct.json", I)
    assert len(sft) == summary["n_sft"] and all(r["answer"] for r in sft)
    pairs = D.load_povid(d / "povid/povid_pairs.json", I)
    assert len(pairs) == WCFG["n_pref"] and all(p["chosen"] != p["rejected"] for p in pairs)
    for sp in D.POPE_SPLITS:
        pope = D.load_pope(d / f"pope/coco_pope_{sp}.json", I)
        labels = [r["label"] for r in pope]
        assert labels.count("yes") == labels.count("no") > 0  # balanced, as POPE
    assert D.load_mmhal(d / "mmhal/response_template.json", I)
    assert D.load_llavaw(d / "llavaw/questions.jsonl", d / "llavaw/answers_gpt4.jsonl", I)
    assert D.load_mmvet(d / "mmvet/mm-vet.json", I)
    assert D.load_gqa(d / "gqa/testdev_balanced_questions.json", I)
    tv = D.load_textvqa(d / "textvqa/TextVQA_0.5.1_val.json", I)
    coco = D.load_coco_instances(d / "coco/instances_val.json", I)
    scenes = D.load_scenes(d / "scenes.jsonl")
    for r in coco:  # COCO annotations are the scenes' objects
        s = scenes[r["image"].split("/")[-1]]
        assert sorted(f"{o.colour} {o.shape}" for o in s.objects) == r["objects"]
    for r in tv:
        assert scenes[r["image"].split("/")[-1]].glyph.lower() == r["answers"][0]
    D.open_image(pairs[0]["image"])


def test_bad_inputs_get_clear_errors(world, tmp_path):
    d, _ = world
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: image does not decode"):
        D.open_image(bad)
    recs = json.loads((d / "povid/povid_pairs.json").read_text())
    recs[2]["rejected"] = "  "
    p = tmp_path / "povid.json"
    p.write_text(json.dumps(recs))
    with pytest.raises(DataError, match=r"povid.json: record 2: field 'rejected' is empty"):
        D.load_povid(p, d / "images")
    p.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        D.load_povid(p, d / "images")
    with pytest.raises(ConfigError, match="judge.rank.endpoint: .* needs an OpenAI-compatible "
                                          "judge endpoint"):
        EndpointJudge({"kind": "endpoint", "rank": {"endpoint": None, "model": "m"},
                       "bench": {"endpoint": "http://x/v1"}}, "judge")


def test_oracle_judge_needs_the_scene(world):
    d, _ = world
    j = OracleJudge(D.load_scenes(d / "scenes.jsonl"))
    with pytest.raises(DataError, match="no ground-truth scene"):
        j.mmhal("nope.png", "describe the image .", "x", "y")


def test_endpoint_judge_against_a_local_openai_compatible_stand_in(world):
    """The online-pair judge speaks the chat-completions API with the image; a local server
    stands in (the benchmark judges: tests/test_mmalign_benchmarks.py)."""
    d, _ = world
    seen = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            reply = {"choices": [{"message": {"content": "7"}}]}
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(reply).encode())

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = endpoint_judge_cfg(f"http://127.0.0.1:{srv.server_port}/v1")
        cfg["rank"]["model"] = "judge-x"
        j = EndpointJudge(cfg)
        img = next((d / "images").iterdir())
        assert j.rank_score(img, "q?", "a", "gt") == 7.0
    finally:
        srv.shutdown()
    path, body = seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "judge-x"
    content = body["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
