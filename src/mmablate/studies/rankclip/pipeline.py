"""RankCLIP's place in the pipeline: its ablatable parts, metrics and stages (light imports only)."""
from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from ...pipeline import SEED, ref
from ..protocol import StudyPipeline
from ..shared import clip_data, clip_train
from ..spec import RANKCLIP as SPEC


class RankCLIP(StudyPipeline):
    spec = SPEC

    def validate(self, scfg: dict, where: str) -> None:
        from ...training.schedule import check_warmup

        tc, data, ev = scfg["train"], scfg["data"], scfg["eval"]
        if scfg["loss"].get("scale", "paper") == "authors_code" and tc.get("epochs") == 1:
            raise ConfigError(f"{where}.loss.scale: authors_code ramps the ranking term by "
                              f"3·(epoch − 1)/(epochs − 1), which needs train.epochs ≥ 2 (got 1)")
        if (tc.get("steps") is None) == (tc.get("epochs") is None):
            raise ConfigError(f"{where}.train: set exactly one of steps and epochs, the other "
                              f"null (epochs: over the data's sample count)")
        if tc.get("steps") is not None:
            check_warmup(tc, where, "train")
        if (data.get("train_shards") is None) == (data.get("train_csv") is None):
            raise ConfigError(f"{where}.data: set exactly one of train_shards (webdataset "
                              f"shards) and train_csv (an open_clip CSV), the other null")
        if data.get("cache") and data.get("train_transform", "open_clip_train") == \
                "open_clip_train":
            raise ConfigError(f"{where}.data.cache: a cached set is transformed once, which "
                              f"would freeze the random crop of train_transform open_clip_train; "
                              f"set data.train_transform: eval or data.cache: false")
        if ev.get("class_source", "files") == "files":
            for k in ("classnames", "templates"):
                if k not in ev:
                    raise ConfigError(f"{where}.eval.{k}: required with eval.class_source files")
        if data["source"] == "files":
            for k in ("root", "eval_root"):
                if not Path(data.get(k, "")).is_dir():
                    raise ConfigError(f"{where}.data.{k}: {data.get(k)!r} is not a directory")

    def ablation_notes(self, scfg: dict, key: str, rows: list) -> list[str]:
        """Under ``loss.scale: authors_code`` λ only switches the ranking term on (the authors'
        ``rankclip/train.py`` gates it on ``lambda1``/``lambda2`` > 0 and never multiplies by
        them): the λ > 0 rows of a λ ablation train one objective, equal by construction."""
        if key != "loss.rank_weight" or scfg["loss"].get("scale", "paper") != "authors_code":
            return []
        on = [r.label for r in rows if r.kind == "variant" and r.value > 0]
        if len(on) < 2:
            return []
        return [f"BY CONSTRUCTION: with loss.scale authors_code, λ only switches the ranking "
                f"term on (the authors' code never multiplies by it): rows {', '.join(on)} "
                f"train the same objective; their differences, if any, are run-to-run noise."]

    def training_blocks(self, scfg: dict) -> dict:
        return {"train": scfg["train"]}

    def variant(self, P, vcfg: dict):
        train = clip_train(P, vcfg)
        _, eval_root, world = clip_data(P, vcfg)
        ev = P.add_stage("rankclip_eval", {"train": train.hash, "model": vcfg["model"],
                                           "eval": vcfg["eval"], "data": {"root": eval_root}},
                         needs={"model": train.ref(SEED), "world": ref(world)})
        return train, {s: ev.output(s) for s in P.seeds}


STUDY = RankCLIP()
