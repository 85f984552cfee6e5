"""PC-CLIP's `python -m mmablate` commands (registered by mmablate.cli)."""
from __future__ import annotations

import json
import time
from pathlib import Path


def _cfg(path):
    from ...util import read_json

    return read_json(path)


def _base(cfg, seed):
    """The base model's weight file for this seed (None: pretrained weights by tag)."""
    b = cfg.get("base")
    return f"{b['dir']}/s{seed}/model.pt" if b else None


def cmd_pairs(a):
    import shutil

    from ...util import write_json
    from .data import coco_pairs, write_world_pairs

    cfg = _cfg(a.config)
    out = Path(a.out).parent
    shutil.rmtree(out / "images", ignore_errors=True)
    t0 = time.time()
    summary = write_world_pairs(cfg, out) if cfg["source"] == "world" else coco_pairs(cfg, out)
    summary["wall_s"] = round(time.time() - t0, 2)
    write_json(out / "summary.json", summary)
    print(json.dumps(summary))


def cmd_captioner(a):
    from ...util import write_json
    from .captioners import train_captioner
    from .data import read_pairs

    cfg = _cfg(a.config)
    rows = read_pairs(cfg["pairs"], "lm", need_images=False)
    if any(not r.get("difference") for r in rows):
        from ...errors import DataError

        raise DataError(f"{cfg['pairs']}: the LM corpus (split 'lm') needs `difference` texts")
    summary = train_captioner(cfg["spec"], rows, Path(a.out).parent / "model", cfg["seed"],
                              a.threads)
    write_json(a.out, summary)
    print(json.dumps(summary))


def cmd_captions(a):
    from ...training.schedule import set_threads
    from ...util import write_json
    from .captioners import is_degenerate, make_captioner, normalise
    from .data import read_pairs, write_captions

    cfg = _cfg(a.config)
    set_threads(a.threads)
    t0 = time.time()
    rows = read_pairs(cfg["pairs"], "train", need_images=False)
    cap = make_captioner(cfg["name"], cfg["spec"], cfg["source"], batch_size=cfg["batch_size"],
                         max_new_tokens=cfg["max_new_tokens"])
    texts = cap.caption(rows)
    vocab = None
    if cfg["filter"].get("vocab_only"):
        from ...world.scenes import vocabulary

        vocab = set(vocabulary())
    out_rows, reasons = [], {}
    for i, (t, r) in enumerate(zip(texts, rows)):
        why = is_degenerate(t, r, cfg["filter"], vocab)
        reasons[why or "kept"] = reasons.get(why or "kept", 0) + 1
        out_rows.append({"pair": i, "text": t, "kept": int(why is None), "reason": why or ""})
    write_captions(a.out, out_rows)
    summary = {"captioner": cfg["name"], "n": len(rows),
               "kept_fraction": sum(r["kept"] for r in out_rows) / len(rows), "reasons": reasons,
               "wall_s": round(time.time() - t0, 2)}
    if all(r.get("difference") for r in rows):  # ground truth known (world pairs)
        ok = [normalise(t) == normalise(r["difference"]) for t, r in zip(texts, rows)]
        kept_ok = [o for o, r in zip(ok, out_rows) if r["kept"]]
        summary["accuracy"] = sum(ok) / len(ok)
        summary["accuracy_kept"] = sum(kept_ok) / len(kept_ok) if kept_ok else 0.0
        by = {}
        for o, r in zip(ok, rows):
            by.setdefault(r["attribute"], []).append(o)
        summary["accuracy_by_attribute"] = {k: sum(v) / len(v) for k, v in sorted(by.items())}
    write_json(Path(a.out).parent / "summary.json", summary)
    print(json.dumps(summary))


def cmd_embed(a):
    from .finetune import embed_pairs

    cfg = _cfg(a.config)
    print(json.dumps(embed_pairs(cfg, _base(cfg, a.seed), a.out, a.threads)))


def cmd_finetune(a):
    from .finetune import finetune

    cfg = _cfg(a.config)
    print(json.dumps(finetune(cfg, a.seed, _base(cfg, a.seed), a.captions, a.embed, a.out,
                              a.threads, a.stop_after)))


def cmd_eval(a):
    from ...util import write_json
    from .evaluate import evaluate

    cfg = _cfg(a.config)
    t0 = time.time()
    metrics, chance, extra = evaluate(cfg, _base(cfg, a.seed), a.model, cfg.get("world_root"),
                                      a.threads, embeddings=a.embed)
    extra["wall_s"] = round(time.time() - t0, 2)
    write_json(a.out, {"study": "pcclip", "seed": a.seed, "metrics": metrics, "chance": chance,
                       "config": cfg, "model": a.model, "extra": extra})
    print(json.dumps(metrics))


def cmd_coco_eval_pairs(a):
    from .data import coco_eval_pairs

    print(json.dumps(coco_eval_pairs(a.captions_json, a.image_dir, a.out, a.n_pairs, a.seed)))


def register(sub):
    def add(name, fn, help, *args, gpu=True):
        s = sub.add_parser(name, help=help)
        s.add_argument("--config", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--threads", type=int, default=1)
        for arg, kw in args:
            s.add_argument(arg, **kw)
        s.set_defaults(fn=fn, gpu=gpu)  # gpu: cli.main claims a free GPU (mmablate.gpu)

    seed = ("--seed", {"type": int, "required": True})
    add("pcclip-pairs", cmd_pairs, "image pairs with descriptions (world or COCO)", gpu=False)
    add("pcclip-captioner", cmd_captioner, "train a small captioner LM on the world corpus")
    add("pcclip-captions", cmd_captions, "difference captions of the training pairs")
    add("pcclip-embed", cmd_embed, "base-model image embeddings of the training pairs", seed)
    add("pcclip-finetune", cmd_finetune, "PC-CLIP finetuning of one variant", seed,
        ("--captions", {"required": True}), ("--embed", {"default": None}),
        ("--stop-after", {"type": int, "default": None}))
    add("pcclip-eval", cmd_eval, "difference, zero-shot, CLIPScore, arithmetic metrics", seed,
        ("--model", {"default": None, "help": "PC-CLIP checkpoint (none: the base model)"}),
        ("--embed", {"default": None, "help": "the base model's image embeddings (pcclip-embed), "
                                              "for a model whose image tower was not trained"}))

    s = sub.add_parser("pcclip-coco-eval-pairs",
                       help="evaluation pairs (eval_pairs.csv) from COCO caption annotations "
                            "(captions_val2017.json): minimal caption pairs")
    s.add_argument("--captions-json", required=True, help="COCO annotations/captions_*.json")
    s.add_argument("--image-dir", required=True, help="its image folder (e.g. coco/val2017)")
    s.add_argument("--out", required=True, help="the CSV to write (pairs.eval_csv)")
    s.add_argument("--n-pairs", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_coco_eval_pairs, gpu=False)
