"""mmalign's rehearsal: its assets read by the paper path's own loaders, the judge stand-in
answering each of the project's judge prompts in the format its parser reads, the preflight
checks against bad inputs (each error naming the key and the file), and the job-time checks
(judge down, judge answering garbage: a clear error, nothing computed lost; a few unparsable
answers: scored as the published scripts score them and counted)."""
import json
import shutil
import time
from pathlib import Path

import pytest

from mmablate.errors import CheckpointError, DataError
from mmablate.rehearsal import mmalign as RA
from mmablate.rehearsal.judge import GARBAGE, JudgeServer, kind_of, reply_for
from mmablate.studies.mmalign import protocols as P
from mmablate.studies.mmalign.judge import EndpointJudge, JudgeError
from mmablate.studies.mmalign.preflight import check_inputs, check_judge

from .conftest import endpoint_judge_cfg

ROOT = Path(__file__).resolve().parents[1]
DATASETS = (RA.write_povid, RA.write_coco_val, RA.write_mmhal, RA.write_llavaw, RA.write_mmvet,
            RA.write_textvqa, RA.write_gqa)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("reh") / "rehearsal/assets"
    RA.write_assets(out)
    return out


def _block(assets: Path) -> dict:
    """The resolved mmalign block of paper.yaml + rehearsal.yaml, its paths under `assets`."""
    from mmablate.config import load

    cfg = load([ROOT / "config/config.yaml", ROOT / "config/scales/paper.yaml",
                ROOT / "config/scales/rehearsal.yaml"])
    text = json.dumps(cfg["studies"]["mmalign"]).replace('"rehearsal/assets', f'"{assets}')
    return json.loads(text)


def _datasets(out: Path):
    for fn in DATASETS:
        fn(out)


def test_dataset_assets_are_deterministic_and_idempotent(tmp_path):
    _datasets(tmp_path / "a")
    _datasets(tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 30
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    t = {f: (tmp_path / "a" / f).stat().st_mtime_ns for f in files}
    _datasets(tmp_path / "a")  # a second run skips what is there
    assert t == {f: (tmp_path / "a" / f).stat().st_mtime_ns for f in files}


def test_assets_read_by_the_paper_loaders(assets):
    """Every benchmark of the rehearsal config loads with the loaders the jobs use, every image
    it names exists, and recall_coco's POPE subset drops the image POPE does not ask about."""
    from mmablate.studies.mmalign.data import load_povid
    from mmablate.studies.mmalign.evaluate import BENCHMARKS, load_benchmarks

    b = _block(assets)
    pairs = load_povid(b["data"]["pairs"]["file"], b["data"]["pairs"]["images"])
    assert len(pairs) == 8 and all(Path(p["image"]).is_file() for p in pairs)
    assert {p["question"] for p in pairs} >= {"Describe this image in detail."}
    ecfg = {**b["eval"], "judge": b["judge"]}
    bench = load_benchmarks(ecfg, BENCHMARKS)
    assert set(bench) == {"pope_random", "pope_popular", "pope_adversarial", "mmhal", "llavaw",
                          "mmvet", "vqat", "gqa", "recall_coco"}
    for name, recs in bench.items():
        assert recs, name
        assert all(Path(r["image"]).is_file() for r in recs), name
    # POPE as distributed: one JSON object per line
    line = (assets / "pope/coco_pope_random.json").read_text().splitlines()[0]
    assert set(json.loads(line)) == {"question_id", "image", "text", "label"}
    inst = json.loads((assets / "coco/annotations/instances_val2014.json").read_text())
    assert len(bench["recall_coco"]) == len(inst["images"]) - 1
    assert all(r["objects"] for r in bench["recall_coco"])
    # MMHal's image_src is a Flickr URL; the image is the URL's last part in images/
    src = json.loads((assets / "mmhal/response_template.json").read_text())[0]["image_src"]
    assert src.startswith("https://") and Path(bench["mmhal"][0]["image"]).name == src.split("/")[-1]


def test_model_miniatures_load_as_their_classes(assets):
    from mmablate.studies.mmalign.judge import SentenceSimilarity
    from mmablate.studies.mmalign.model import generate, load, prompt

    model, proc = load(str(assets / RA.LLAVA))
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    assert type(proc).__name__ == "LlavaNextProcessor"
    assert model.config.image_grid_pinpoints and proc.tokenizer.convert_tokens_to_ids("<image>") \
        == model.config.image_token_id
    assert prompt(proc, "Is there a dog?") == "USER: <image>\nIs there a dog? ASSISTANT:"
    imgs = sorted(str(p) for p in (assets / "coco/val2014").iterdir())[:2]
    out = generate(model, proc, imgs, ["Describe this image in detail."] * 2, max_new_tokens=3,
                   batch_size=2)
    assert len(out) == 2
    sim = SentenceSimilarity(str(assets / RA.EMBEDDER))
    c = sim.cosine(["a dog on a chair.", "a dog on a chair."], ["a dog on a chair.", "a red car"])
    assert c[0] == pytest.approx(1.0, abs=1e-5) and c[1] < 0.9999
    mods = json.loads((assets / RA.EMBEDDER / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in mods] == ["Transformer", "Pooling", "Normalize"]


# ---- the judge stand-in --------------------------------------------------------------------
def _prompts():
    return {"mmhal": {"messages": P.mmhal_request(["Cat"], "How many?", "Two cats.", "One.")},
            "llavaw": {"messages": P.llavaw_request("a cat", "What?", "A cat.", "A dog.")},
            "mmvet": {"messages": P.mmvet_request("What is x?", "-1<AND>-5", "x = 3")},
            "rank": {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                {"type": "text", "text": "Rate the helpfulness, relevance, accuracy and level of "
                                         "detail of the response to the question ..."}]}]}}


def test_stand_in_replies_parse_with_each_benchmarks_parser_and_vary():
    parse = {"mmhal": P.parse_mmhal, "llavaw": P.parse_llavaw, "mmvet": P.parse_mmvet,
             "rank": lambda r: float(r)}
    for kind, body in _prompts().items():
        assert kind_of(body["messages"]) == kind
        assert reply_for(body) == reply_for(json.loads(json.dumps(body)))  # deterministic
        parse[kind](reply_for(body))
    # scores differ between responses
    many = {P.parse_mmhal(reply_for({"messages": P.mmhal_request(["Cat"], "Q?", "A.", f"r{i}")}))
            for i in range(30)}
    assert len(many) >= 4
    with pytest.raises(ValueError, match="not one of mmalign's judge prompts"):
        reply_for({"messages": [{"role": "user", "content": "hello"}]})
    with pytest.raises(DataError):
        P.parse_mmhal(reply_for(_prompts()["mmhal"], mode="garbage"))


def test_endpoint_judge_against_the_stand_in(tmp_path, assets):
    import urllib.request

    items = [{"qid": i, "image": str(next((assets / "coco/val2014").iterdir())),
              "question": f"q{i}?", "response": f"r{i}", "gt_answer": "gt",
              "image_content": ["Cat"], "context": "a cat"} for i in range(5)]
    with JudgeServer(port=0) as j:
        assert j.url.startswith("http://127.0.0.1:") and j.url.endswith("/v1")
        with urllib.request.urlopen(j.url + "/models") as r:
            assert json.loads(r.read())["data"][0]["id"]
        check_judge({"endpoint": j.url})
        # rehearsal.yaml's judge block: the stand-in in both roles
        jcfg = _block(assets)["judge"]
        assert jcfg["rank"]["endpoint"] == jcfg["bench"]["endpoint"] == \
            "http://127.0.0.1:18765/v1"
        jcfg["rank"]["endpoint"] = jcfg["bench"]["endpoint"] = j.url
        e = EndpointJudge(jcfg, cache_dir=tmp_path / "c")
        assert all(0 <= s <= 6 for s in e.mmhal_many(items))
        assert all(1 <= a <= 10 and 1 <= b <= 10 for a, b in e.llavaw_many(items))
        assert all(0 <= s <= 1 for s in e.mmvet_many(items))
        assert all(1 <= s <= 10 for s in e.rank_many([(it["image"], it["question"],
                                                       it["response"], "gt") for it in items]))
        assert j.requests == {"mmhal": 5, "llavaw": 5, "mmvet": 5, "rank": 5}
        # each role asked with its own model: the paper's ranker, the benchmarks' GPT-4s
        models = {kind_of(b["messages"]): b["model"] for b in j.bodies}
        assert models == {"rank": "llava-hf/llava-v1.6-34b-hf", "mmhal": "gpt-4-0314",
                          "llavaw": "gpt-4-0314", "mmvet": "gpt-4-0613"}
        assert e.unparsed == {"mmhal": 0, "llavaw": 0, "mmvet": 0}


def test_default_port_and_url():
    assert JudgeServer().url == "http://127.0.0.1:18765/v1"


def test_judge_down_is_an_error_naming_the_endpoint_within_seconds():
    with JudgeServer(port=0) as j:
        url = j.url
    t0 = time.time()
    with pytest.raises(JudgeError, match=rf"studies.mmalign.judge.bench.endpoint: judge endpoint "
                                         rf"{url} does not answer"):
        check_judge({"endpoint": url, "model": "judge-x"}, tries=2, wait_s=0.1)
    assert time.time() - t0 < 10


def test_garbage_answers_are_an_error_and_never_cached(tmp_path):
    """A judge answering garbage stops the job naming the benchmark and the count (more than
    max_unparsed of its answers do not read); its answers are not cached, so the rerun against
    a fixed judge asks again and succeeds."""
    items = [{"qid": i, "image": "x.png", "question": f"q{i}?", "response": f"r{i}",
              "gt_answer": "gt", "image_content": ["Cat"], "context": "c"} for i in range(2)]
    with JudgeServer(port=0, mode="garbage") as j:
        e = EndpointJudge(endpoint_judge_cfg(j.url, backoff_s=0.01), cache_dir=tmp_path / "c")
        with pytest.raises(JudgeError, match=r"judge.bench.max_unparsed: mmhal: 2 of 2 judge "
                                             r"answers do not read .*" + GARBAGE[:10]):
            e.mmhal_many(items)
        with pytest.raises(JudgeError, match=r"llavaw: 2 of 2 judge answers do not read"):
            e.llavaw_many(items)
        n = len(j.bodies)
        with pytest.raises(JudgeError, match=r"mmvet: 2 of 2 judge answers do not read"):
            e.mmvet_many(items)
        assert len(j.bodies) - n == 2 * 5  # MM-Vet's evaluator: the ask and 4 read re-asks
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
        with pytest.raises(JudgeError, match=r"online pairs: .*\(no rating\)"):
            e.rank_many([(str(tmp_path / "x.png"), "q?", "r", "gt")])
    assert not list((tmp_path / "c").rglob("*.json"))
    with JudgeServer(port=0) as j:
        e = EndpointJudge(endpoint_judge_cfg(j.url), cache_dir=tmp_path / "c")
        assert len(e.mmhal_many(items)) == 2 and e.stats["bench"]["requests"] == 2


def test_stand_in_with_some_unparsable_answers_is_counted_per_benchmark(tmp_path):
    """The stand-in answering garbage to a share of the requests: each benchmark scores those
    as its script does (MMHal 0, LLaVA-W [-1, -1], MM-Vet re-asked, then 0), counts them in
    ``judge_unparsed_<benchmark>``, and the job goes on while the share is within
    max_unparsed; past it the job fails naming the benchmark and the count."""
    from mmablate.studies.mmalign.evaluate import score

    n = 200
    bench = {b: [{"qid": i, "image": "x.png", "question": f"{b} q{i}?", "gt_answer": "gt",
                  "image_content": ["Cat"], "context": "c"} for i in range(n)]
             for b in ("mmhal", "llavaw", "mmvet")}
    answers = {("x.png", r["question"]): f"answer {r['qid']}" for v in bench.values() for r in v}
    with JudgeServer(port=0, garbage_share=0.1) as j:
        cfg = endpoint_judge_cfg(j.url, concurrency=4)
        cfg["bench"]["max_unparsed"] = 0.25
        e = EndpointJudge(cfg, cache_dir=tmp_path / "c")
        m, _ = score(bench, answers, e)
        garbage = [b for b in j.bodies if reply_for(b, garbage_share=0.1) == GARBAGE]
    per = {k: sum(kind_of(b["messages"]) == k for b in garbage) for k in bench}
    # MMHal and LLaVA-W: every unreadable first answer stays unread (no re-ask)
    assert m["judge_unparsed_mmhal"] == per["mmhal"] and 5 <= per["mmhal"] <= 40
    assert m["judge_unparsed_llavaw"] == per["llavaw"] and 5 <= per["llavaw"] <= 40
    # MM-Vet re-asks (another prompt: another draw): few stay unread after four re-asks
    retried = [b for b in j.bodies if b["messages"][0]["content"].endswith("(digit): ")]
    assert len(retried) >= per["mmvet"] - m["judge_unparsed_mmvet"] > 0
    assert m["judge_unparsed_mmvet"] < per["mmvet"]
    # the published treatment: MMHal's unread ratings are 0 (so "hallucinated")
    mm_ok = [b for b in j.bodies if kind_of(b["messages"]) == "mmhal"
             and reply_for(b, garbage_share=0.1) != GARBAGE]
    rated = [P.parse_mmhal(reply_for(b)) for b in mm_ok]
    assert m["mmhal"] == pytest.approx(sum(rated) / n)
    # LLaVA-W: the unread pairs enter both means as -1
    ll = [reply_for(b, garbage_share=0.1) for b in j.bodies if kind_of(b["messages"]) == "llavaw"]
    pairs = [P.read_llavaw(r) or (-1.0, -1.0) for r in ll]
    assert m["llavaw"] == pytest.approx(100 * sum(b for _, b in pairs) / sum(a for a, _ in pairs))
    # a share of exactly max_unparsed passes; past it: an error naming the benchmark and the
    # count; the garbage was not cached (asked again), the good answers were
    k = per["mmhal"]
    with JudgeServer(port=0, garbage_share=0.1) as j:
        cfg = endpoint_judge_cfg(j.url)
        assert cfg["bench"]["max_unparsed"] == 0.05  # paper.yaml's
        cfg["bench"]["max_unparsed"] = k / n
        e = EndpointJudge(cfg, cache_dir=tmp_path / "c")
        assert score({"mmhal": bench["mmhal"]}, answers, e)[0]["judge_unparsed_mmhal"] == k
        assert e.stats["bench"] == {"requests": k, "cache_hits": n - k, "retries": 0}
        cfg["bench"]["max_unparsed"] = (k - 1) / n
        e = EndpointJudge(cfg, cache_dir=tmp_path / "c")
        with pytest.raises(JudgeError, match=rf"mmhal: {k} of {n} judge answers do not read "
                                             rf".*more than max_unparsed = {(k - 1) / n:g}"):
            score({"mmhal": bench["mmhal"]}, answers, e)


def test_cached_bad_answer_is_asked_again(tmp_path):
    """A cache written before validation existed (or by hand) holding garbage is re-asked."""
    items = [{"qid": 0, "image": "x.png", "question": "q?", "response": "r", "gt_answer": "g",
              "image_content": ["Cat"]}]
    with JudgeServer(port=0) as j:
        e = EndpointJudge(endpoint_judge_cfg(j.url), cache_dir=tmp_path)
        good = e.mmhal_many(items)
        f = next(tmp_path.rglob("*.json"))
        rec = json.loads(f.read_text())
        f.write_text(json.dumps({**rec, "reply": "garbage"}))
        e2 = EndpointJudge(endpoint_judge_cfg(j.url), cache_dir=tmp_path)
        assert e2.mmhal_many(items) == good and e2.stats["bench"]["requests"] == 1


def test_answers_kept_before_scoring_are_reused(assets, tmp_path):
    """A benchmark job that failed at the judge reruns without generating again (its answers
    are kept beside its record), and only for the same model files and settings."""
    from mmablate.studies.mmalign.evaluate import evaluate, load_benchmarks
    from mmablate.studies.mmalign.model import load
    from mmablate.studies.mmalign.cli import _model_identity

    b = _block(assets)
    ecfg = {**b["eval"], "judge": b["judge"]}
    bench = load_benchmarks(ecfg, ["gqa"])
    model, proc = load(str(assets / RA.LLAVA))
    f = tmp_path / "answers.json"
    mid = _model_identity(assets / RA.LLAVA)
    m1, _, _ = evaluate(model, proc, ecfg, bench, None, answers_file=f, model_id=mid)
    assert f.is_file()
    m2, _, _ = evaluate(None, proc, ecfg, bench, None, answers_file=f, model_id=mid)  # no model
    assert m1 == m2
    with pytest.raises(AttributeError):  # another model: its answers are not reused
        evaluate(None, proc, ecfg, bench, None, answers_file=f, model_id=mid + ["other"])


# ---- preflight -------------------------------------------------------------------------------
WHERE = "config/scales/paper.yaml + config/scales/rehearsal.yaml"


def test_preflight_passes_the_rehearsal_and_skips_the_world(assets):
    check_inputs(_block(assets), WHERE)
    from mmablate.config import load

    world = load([ROOT / "config/config.yaml"])["studies"]["mmalign"]
    check_inputs(world, "config/config.yaml")  # the world reads no such files


def _bad(tmp_path, assets, edit):
    d = tmp_path / "a"
    shutil.copytree(assets, d, ignore=shutil.ignore_patterns("model.safetensors"))
    for m in (RA.LLAVA, RA.EMBEDDER):  # weights: links (the checks only look for them)
        (d / m / "model.safetensors").symlink_to(assets / m / "model.safetensors")
    edit(d)
    with pytest.raises((DataError, CheckpointError)) as e:
        check_inputs(_block(d), WHERE)
    msg = str(e.value)
    assert msg.startswith(WHERE + ": studies.mmalign.")
    return msg


def test_preflight_pope_empty_list(tmp_path, assets):
    msg = _bad(tmp_path, assets, lambda d: (d / "pope/coco_pope_random.json").write_text("[]\n"))
    assert "studies.mmalign.eval.benchmarks.pope.files.random: " in msg
    assert msg.endswith("coco_pope_random.json: an empty list; POPE records (one JSON object "
                        "per line: question_id, image, text, label) expected")


def test_preflight_missing_benchmark_file_and_folder(tmp_path, assets):
    msg = _bad(tmp_path, assets, lambda d: (d / "mm-vet/mm-vet.json").unlink())
    assert "studies.mmalign.eval.benchmarks.mmvet.file: " in msg and "mm-vet.json: not found" in msg
    msg = _bad(tmp_path / "2", assets, lambda d: shutil.rmtree(d / "gqa/images"))
    assert "studies.mmalign.eval.benchmarks.gqa.images: " in msg and "gqa/images: not found" in msg


def test_preflight_wrong_shape_and_wrong_image_folder(tmp_path, assets):
    msg = _bad(tmp_path, assets, lambda d: (d / "mm-vet/mm-vet.json").write_text("[]"))
    assert "benchmarks.mmvet.file: " in msg and "a JSON list; MM-Vet records (a JSON object" in msg
    msg = _bad(tmp_path / "2", assets, lambda d: [p.unlink() for p in (d / "mmhal/images").iterdir()])
    assert "benchmarks.mmhal.images: " in msg and "no image '4675740_7a0d8fb5d8_o.jpg'" in msg


def test_preflight_model_folder_without_tokenizer(tmp_path, assets):
    msg = _bad(tmp_path, assets, lambda d: (d / RA.LLAVA / "tokenizer.json").unlink())
    assert "studies.mmalign.model.base: " in msg and "no tokenizer" in msg
    msg = _bad(tmp_path / "2", assets, lambda d: (d / RA.EMBEDDER / "modules.json").unlink())
    assert "studies.mmalign.bdhs.embedder: " in msg and "no modules.json" in msg


def test_preflight_povid_without_rejected(tmp_path, assets):
    def edit(d):
        f = d / "povid/povid_pairs.json"
        recs = json.loads(f.read_text())
        f.write_text(json.dumps([{k: v for k, v in r.items() if k != "rejected"} for r in recs]))

    msg = _bad(tmp_path, assets, edit)
    assert "studies.mmalign.data.pairs.file: " in msg and "no field(s) ['rejected']" in msg


def _job_stats(out: str) -> dict:
    lines = out[out.index("Job stats:"):].splitlines()[3:]
    stats = {}
    for ln in lines:
        parts = ln.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        stats[parts[0]] = int(parts[1])
    return stats


@pytest.mark.slow
def test_rehearsal_plans_the_paper_jobs_of_mmalign(assets, tmp_path):
    """`snakemake -n` of paper.yaml + rehearsal.yaml plans the rules and jobs per rule of
    paper.yaml alone (mmalign only, 2 GPUs per job as the rehearsal runs it; paper.yaml planned
    with `preflight=false`, its data not being on this machine)."""
    import subprocess
    import sys

    work = assets.parent.parent  # the rehearsal config's paths are relative to it
    for d in ("config", "src"):
        if not (work / d).exists():
            (work / d).symlink_to(ROOT / d)
    only = tmp_path / "only.yaml"
    only.write_text("gpus: 2\nstudies:\n  rankclip: {enabled: false}\n  pcclip: {enabled: false}\n"
                    "  pairrank: {enabled: false}\n  mmalign:\n    judge:\n"
                    "      rank: {endpoint: 'http://127.0.0.1:18765/v1'}\n"
                    "      bench: {endpoint: 'http://127.0.0.1:18765/v1'}\n")
    snake = [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "all"]
    runs = {}
    # paper.yaml's /datasets paths do not exist here: its plan is made with the input checks off
    for name, files, extra in (
            ("paper", ["config/scales/paper.yaml"], ["--config", "preflight=false"]),
            ("rehearsal", ["config/scales/paper.yaml", "config/scales/rehearsal.yaml"], [])):
        r = subprocess.run(snake + ["--configfile", *files, str(only)] + extra, cwd=work,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs[name] = _job_stats(r.stdout + r.stderr)
    assert runs["rehearsal"] == runs["paper"]
    assert runs["paper"]["mmalign_bench"] == 7 * runs["paper"]["mmalign_merge"]
    assert {"mmalign_bdhs", "mmalign_dpo", "mmalign_bench", "mmalign_merge", "table",
            "figure"} <= set(runs["paper"])
