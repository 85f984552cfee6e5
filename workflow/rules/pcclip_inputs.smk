# Input functions and helpers of workflow/rules/pcclip.smk (kept apart: snakemake --lint).

# PC-CLIP (plans 001, 002): pairs → captioner LMs → difference captions → (shared) image
# embeddings → finetuning per variant → evaluation. Logic in mmablate.studies.pcclip.


def pcclip_base(stage):
    """The base model's weights of seed {seed} (nothing for pretrained weights loaded by tag)."""
    def f(w):
        base = P.stage(stage, w.h)["base"]
        return [] if base is None else [f"{base['dir']}/s{w.seed}/model.pt"]
    return f


def pcclip_pairs_of(stage):
    return lambda w: P.stage(stage, w.h)["pairs"]


def pcclip_captioner_of(w):
    src = P.stage("pcclip_captions", w.h)["source"]
    trained = f"{R}/pcclip/captioner/"
    return [str(Path(src).parent / "summary.json")] if src and src.startswith(trained) else []


def pcclip_finetune_inputs(w):
    cfg = P.stage("pcclip_finetune", w.h)
    out = {"captions": f"{R}/pcclip/captions/{cfg['captions']}/captions.csv"}
    if cfg["embed"] is not None:
        out["embed"] = f"{R}/pcclip/embed/{cfg['embed']}/s{w.seed}/embeddings.pt"
    return out


def pcclip_eval_inputs(w):
    cfg = P.stage("pcclip_eval", w.h)
    out = {}
    if cfg["finetune"] is not None:
        out["model"] = f"{R}/pcclip/finetune/{cfg['finetune']}/s{w.seed}/model.pt"
    if cfg["world_root"] is not None:
        out["world"] = f"{cfg['world_root']}/summary.json"
    return out


