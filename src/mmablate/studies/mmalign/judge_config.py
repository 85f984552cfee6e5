"""mmalign's judge blocks (light: no world or model imports, so config checks stay cheap):
the two roles, ``judge.rank`` and ``judge.bench``, and each judged benchmark's settings. Types and
ranges are the schema's (workflow/schemas/config.schema.yaml); `check_config` checks across keys
and refuses the old single block."""
from __future__ import annotations

from ...errors import ConfigError

ROLES = {"rank": "ranks Mixed-DPO's online pairs",
         "bench": "scores MMHal, MMHALv, LLaVA-W and MM-Vet"}
JUDGED_BENCHMARKS = ("mmhal", "llavaw", "mmvet")
SHARED = ("timeout_s", "concurrency", "retries", "backoff_s", "cache_dir")  # both clients'
_TWO_BLOCKS = ("judge.rank: {endpoint, model, temperature, max_tokens, api_key_env} (ranks "
               "Mixed-DPO's online pairs) and judge.bench: {endpoint, api_key_env, max_unparsed, "
               "mmhal/llavaw/mmvet: {model, temperature, max_tokens}} (scores MMHal, MMHALv, "
               "LLaVA-W, MM-Vet), as config/scales/paper.yaml has them")


def check_config(j: dict, where: str = "studies.mmalign.judge", source: str | None = None):
    """The judge block `j` (at `where`) is usable: ConfigError naming the key otherwise. The old
    single block (``endpoint``/``api_key_env`` at its top, or a ``model`` with ``kind:
    endpoint``) is refused with what to write instead: its one judge did both roles."""
    if j.get("kind") == "oracle":
        if source is not None and source != "world":
            raise ConfigError(f"{where}.kind: the oracle judge only knows the synthetic world; "
                              f"with real data set judge.kind: endpoint")
        return
    old = [k for k in ("endpoint", "api_key_env", "temperature", "max_tokens") if k in j]
    if j.get("model") is not None:
        old.append("model")
    if old:
        raise ConfigError(
            f"{where}.{old[0]}: the single judge block ({', '.join(old)} directly under judge:) "
            f"is no longer read: mmalign's judge has two roles, each with its own endpoint and "
            f"model. Write {_TWO_BLOCKS}" + ("; with kind: endpoint set judge.model: null (the "
                                            "world oracle's label)" if "model" in old else ""))
    for role, what in ROLES.items():
        r = j.get(role)
        if not isinstance(r, dict):
            raise ConfigError(f"{where}.{role}: missing; the endpoint judge needs both roles: "
                              f"{_TWO_BLOCKS}")
        if not r.get("endpoint"):
            raise ConfigError(
                f"{where}.{role}.endpoint: the judge that {what} needs an OpenAI-compatible "
                f"judge endpoint (e.g. http://host:8000/v1 serving "
                f"{r.get('model') or 'the judge model'}); none is set")
    if not j["rank"].get("model"):
        raise ConfigError(f"{where}.rank.model: the online-pair judge's model is not set")
    for b in JUDGED_BENCHMARKS:
        s = bench_settings(j["bench"], b)
        if not s["model"]:
            raise ConfigError(f"{where}.bench.{b}.model: not set (and no judge.bench.model for "
                              f"all benchmarks); the published one is in config/scales/paper.yaml")
        if s["temperature"] is None:
            raise ConfigError(f"{where}.bench.{b}.temperature: not set (and no "
                              f"judge.bench.temperature for all benchmarks)")


def bench_settings(bench: dict, name: str) -> dict:
    """{model, temperature, max_tokens} of benchmark `name`'s judge requests: the benchmark's
    own (``judge.bench.<name>``: the published values) unless ``judge.bench`` sets one for all.
    ``max_tokens: null`` sends none (MMHal-Bench's script sends none)."""
    own = bench.get(name) or {}
    return {k: bench.get(k) if bench.get(k) is not None else own.get(k)
            for k in ("model", "temperature", "max_tokens")}
