"""The rehearsal's judge stand-in: an OpenAI-compatible chat-completions server on 127.0.0.1.

It serves both of mmalign's judge roles (``studies.mmalign.judge.rank`` and ``.bench`` name it;
each request's own ``model`` is echoed back) and answers every prompt they send
(`studies.mmalign.judge`, `studies.mmalign.protocols`) in the format that prompt's parser reads, with a score drawn
deterministically from a hash of the request (so scores vary across answers and repeat across
runs):

* MMHal-Bench's rating template (``### LMM Response to Evaluate``): a short explanation, then
  ``Rating: k`` with k in 0–6 (`protocols.parse_mmhal`);
* LLaVA-Bench's review (system ``You are a helpful and precise assistant…``, user ``[Context]…``):
  the first line two scores 1–10, then an explanation (`protocols.parse_llavaw`);
* MM-Vet's grader (the few-shot correctness table): one number 0.0–1.0 (`protocols.parse_mmvet`);
* the online-pair ranking of Mixed-DPO (an image part and ``Rate the helpfulness…``): a rating
  1–10 (`judge.EndpointJudge.rank_many`).

A prompt of none of these kinds is answered HTTP 400 naming it (a new judge prompt must be taught
to the stand-in, not answered at random). ``GET /v1/models`` lists the one model.

``mode="garbage"`` answers every prompt with text no parser accepts (bad-input tests: the run must
stop with an error naming the benchmark); ``garbage_share=f`` answers that text to the share f of
the requests (drawn from each request's hash: the same request always gets the same answer), so
the benchmarks' counting of unparsable replies, and MM-Vet's re-asks, are exercised. Start it in-process
(``with JudgeServer(port=18765) as j: j.url``) or as ``python -m mmablate rehearsal-judge --port P``.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..studies.mmalign.protocols import LLAVA_BENCH_SYSTEM, MMHAL_TEMPLATE, MMVET_PROMPT

MODES = ("ok", "garbage")
GARBAGE = "I am not able to evaluate this."
_MMHAL_MARK = "### LMM Response to Evaluate"
_MMVET_MARK = MMVET_PROMPT.splitlines()[0][:80]
_RANK_MARK = "Rate the helpfulness, relevance, accuracy and level of detail of the response"


def _text_of(content) -> tuple[str, bool]:
    """(the text of a message's content, whether it holds an image part)."""
    if isinstance(content, str):
        return content, False
    parts = content if isinstance(content, list) else []
    text = "\n".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")
    return text, any(isinstance(p, dict) and p.get("type") == "image_url" for p in parts)


def _draw(body: dict) -> int:
    return int(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12], 16)


def kind_of(messages: list) -> str | None:
    """Which of the project's judge prompts `messages` is (mmhal, llavaw, mmvet, rank), or None."""
    if not isinstance(messages, list) or not messages:
        return None
    texts = [_text_of(m.get("content", "")) for m in messages if isinstance(m, dict)]
    system = [t for (t, _), m in zip(texts, messages) if m.get("role") == "system"]
    user = "\n".join(t for (t, _), m in zip(texts, messages) if m.get("role") == "user")
    image = any(i for _, i in texts)
    if _MMHAL_MARK in user and MMHAL_TEMPLATE.splitlines()[0][:60] in user:
        return "mmhal"
    if system and system[0] == LLAVA_BENCH_SYSTEM and user.startswith("[Context]"):
        return "llavaw"
    if user.startswith(_MMVET_MARK):
        return "mmvet"
    if image and _RANK_MARK in user:
        return "rank"
    return None


def reply_for(body: dict, mode: str = "ok", garbage_share: float = 0.0) -> str:
    """The stand-in's answer to one chat-completions request body (ValueError: unknown prompt);
    `garbage_share`: the share of requests answered `GARBAGE` (by the request's hash)."""
    kind = kind_of(body.get("messages"))
    if kind is None:
        raise ValueError("not one of mmalign's judge prompts (MMHal rating, LLaVA-Bench review, "
                         "MM-Vet grading, online-pair rating)")
    h = _draw(body)
    if mode == "garbage" or (h >> 20) % 1000 < 1000 * garbage_share:
        return GARBAGE
    if kind == "mmhal":
        k = h % 7
        return (f"The response is compared with the image contents and the standard answer; "
                f"the stand-in judge's verdict is drawn from the request.\nRating: {k}")
    if kind == "llavaw":
        a, b = 1 + h % 10, 1 + (h // 10) % 10
        return f"{a} {b}\nAssistant 1 and Assistant 2 were rated by the rehearsal's stand-in judge."
    if kind == "mmvet":
        return f"{(h % 11) / 10:.1f}"
    return str(1 + h % 10)


class JudgeServer:
    """The stand-in judge on ``127.0.0.1:port`` (a daemon thread) as a context manager:
    ``with JudgeServer(port=18765) as j: ... j.url`` (``http://127.0.0.1:18765/v1``).
    ``port=0`` takes a free port. ``requests`` counts the answered prompts by kind."""

    def __init__(self, port: int = 18765, mode: str = "ok", model: str = "rehearsal-judge",
                 host: str = "127.0.0.1", reply=None, fail=(), garbage_share: float = 0.0):
        """`reply(body) -> str`: answer every request with it instead (client tests); `fail`:
        HTTP statuses to answer the first requests with, one each (retry tests). ``bodies``
        keeps every request body received."""
        if mode not in MODES:
            raise ValueError(f"judge stand-in mode {mode!r}; known: {', '.join(MODES)}")
        if not 0 <= garbage_share <= 1:
            raise ValueError(f"judge stand-in garbage_share {garbage_share!r}: a share in [0, 1]")
        self.garbage_share = garbage_share
        self._srv = self._thread = None
        self.mode, self.model, self.host, self.port = mode, model, host, port
        self.reply, self.fail, self.bodies = reply, list(fail), []
        self.requests: dict[str, int] = {}

    @classmethod
    def from_url(cls, url: str, **kw) -> "JudgeServer":
        """The stand-in for an endpoint URL such as ``http://127.0.0.1:18765/v1``."""
        from urllib.parse import urlparse

        u = urlparse(url)
        if u.hostname not in ("127.0.0.1", "localhost") or not u.port:
            raise ValueError(f"{url}: the judge stand-in serves on 127.0.0.1:<port> only")
        return cls(port=u.port, host="127.0.0.1", **kw)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _handler(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            def _send(self, code: int, obj: dict):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": outer.model, "object": "model", "owned_by": "rehearsal"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    outer.bodies.append(body)
                    if outer.fail:
                        code = outer.fail.pop(0)
                        self._send(code, {"error": {"message": f"judge stand-in: HTTP {code}"}})
                        return
                    text = outer.reply(body) if outer.reply else \
                        reply_for(body, outer.mode, outer.garbage_share)
                except (ValueError, AttributeError) as e:
                    self._send(400, {"error": {"message": f"judge stand-in: {e}",
                                               "type": "invalid_request_error"}})
                    return
                kind = kind_of(body.get("messages")) or "other"
                outer.requests[kind] = outer.requests.get(kind, 0) + 1
                self._send(200, {
                    "id": f"chatcmpl-{_draw(body) % 10 ** 12}", "object": "chat.completion",
                    "created": 0, "model": body.get("model", outer.model),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

            def log_message(self, *a):  # quiet: the jobs' logs hold what matters
                pass

        return H

    def start(self) -> "JudgeServer":
        self._srv = ThreadingHTTPServer((self.host, self.port), self._handler())
        self._srv.daemon_threads = True
        self.port = self._srv.server_port
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True,
                                        name=f"judge-stand-in:{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_forever(self) -> None:
        """Serves in the calling thread until interrupted (the ``rehearsal-judge`` command)."""
        self._srv = ThreadingHTTPServer((self.host, self.port), self._handler())
        self._srv.daemon_threads = True
        self.port = self._srv.server_port
        print(f"rehearsal judge stand-in ({self.mode}) at {self.url}", flush=True)
        try:
            self._srv.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._srv.server_close()


def cmd_judge(a):
    JudgeServer(port=a.port, mode=a.mode, host=a.host,
                garbage_share=a.garbage_share).serve_forever()


def register(sub):
    s = sub.add_parser("rehearsal-judge", help="serve the rehearsal's judge stand-in (an "
                       "OpenAI-compatible chat-completions endpoint) until killed")
    s.add_argument("--port", type=int, default=18765)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--mode", choices=MODES, default="ok",
                   help="ok: well-formed deterministic answers; garbage: unparseable answers")
    s.add_argument("--garbage-share", type=float, default=0.0,
                   help="share of requests answered with unparseable text (mode ok)")
    s.set_defaults(fn=cmd_judge)
