"""mmalign at the paper's shapes on CPU stand-ins: a tiny LLaVA-1.6 (`LlavaNext`, AnyRes tiles)
saved with `save_pretrained` and run SFT → BDHS → DPO (LoRA) → benchmarks, BDHS's mask over every
tile's image tokens, and lazily decoded images giving the eager results."""
import json

import numpy as np
import pytest
import torch

from mmablate.studies.mmalign.worlddata import write_mmalign_world

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
WCFG = dict(seed=7, colours=COLOURS, shapes=SHAPES, max_objects=2, glyph_prob=0.5, cooccur=0.6,
            image_size=32, n_sft=4, n_pref=4, n_eval=2, pref_yesno_frac=0.5)
VISION = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2}
TEXT = {"width": 32, "mlp": 64, "layers": 1, "heads": 2, "max_len": 256}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("next")
    write_mmalign_world(WCFG, d / "w")
    return d


def _sft_cfg(w, arch, **train):
    return {"seed": 0, "model": {"arch": arch, "vision": VISION, "text": TEXT},
            "colours": COLOURS, "shapes": SHAPES,
            "data": {"file": str(w / "sft/llava_instruct.json"), "images": str(w / "images")},
            "train": {"steps": 2, "batch_size": 4, "lr": 0.002, "weight_decay": 0.0, "warmup": 0,
                      "log_every": 1, "ckpt_every": 10, **train}}


@pytest.mark.parametrize("arch", ["llava", "llava_next"])
def test_lazy_records_equal_the_eager_batch_encoding(world, arch):
    """Records decoded one by one from disk (what the DataLoader workers do) give the tensors
    of one processor call over every image at once (the former eager encoding)."""
    from mmablate.studies.mmalign.data import load_llava_instruct, open_image
    from mmablate.studies.mmalign.model import build_tiny, prompt
    from mmablate.studies.mmalign.sft import Records, collate

    w = world / "w"
    recs = load_llava_instruct(w / "sft/llava_instruct.json", w / "images")[:6]
    _, proc = build_tiny({"arch": arch, "vision": VISION, "text": TEXT}, COLOURS, SHAPES)
    lazy = collate([Records(proc, recs)[i] for i in range(len(recs))], proc.tokenizer.pad_token_id)
    # a micro-batch asked for at once (the DataLoader's __getitems__): one processor call
    batched = collate(Records(proc, recs, cache=True).__getitems__([0, 3, 1, 2, 5, 4, 3]),
                      proc.tokenizer.pad_token_id)
    order = [0, 3, 1, 2, 5, 4, 3]
    one = collate([Records(proc, recs)[i] for i in order], proc.tokenizer.pad_token_id)
    for k in one:
        assert torch.equal(batched[k], one[k]), k
    eager = proc(images=[open_image(r["image"]) for r in recs],
                 text=[prompt(proc, r["question"]) for r in recs], return_tensors="pt",
                 padding=True)
    torch.testing.assert_close(lazy["pixel_values"], eager["pixel_values"], rtol=0, atol=0)
    for k, r in enumerate(recs):
        n = int(eager["attention_mask"][k].sum())
        want = eager["input_ids"][k, -n:].tolist()  # left padding
        assert lazy["input_ids"][k, :n].tolist() == want
    if arch == "llava_next":
        assert torch.equal(lazy["image_sizes"], eager["image_sizes"])
        assert lazy["pixel_values"].shape[1] == 3  # base image + two 32 px tiles of a 32×64 fit


def test_lazy_generation_equals_decoded_images(world):
    from mmablate.studies.mmalign.data import open_image
    from mmablate.studies.mmalign.model import build_tiny, generate

    torch.manual_seed(0)
    model, proc = build_tiny({"arch": "llava_next", "vision": VISION, "text": TEXT}, COLOURS,
                             SHAPES)
    paths = sorted(str(p) for p in (world / "w/images").iterdir())[:5]
    qs = ["describe the image ."] * 5
    a = generate(model, proc, paths, qs, max_new_tokens=4, batch_size=2)
    b = generate(model, proc, [open_image(p) for p in paths], qs, max_new_tokens=4, batch_size=5)
    assert a == b


def test_bdhs_mask_covers_every_anyres_tile(world):
    from mmablate.studies.mmalign.bdhs import image_mask_hook
    from mmablate.studies.mmalign.data import open_image
    from mmablate.studies.mmalign.model import build_tiny, prompt

    model, proc = build_tiny({"arch": "llava_next", "vision": VISION, "text": TEXT}, COLOURS,
                             SHAPES)
    img = open_image(next((world / "w/images").iterdir()))
    enc = proc(images=[img], text=[prompt(proc, "describe the image .")], return_tensors="pt")
    image_id = model.config.image_token_id
    is_img = enc["input_ids"] == image_id
    # the model's own count of image features (every tile, base image and row newlines)
    feats = model.model.get_image_features(enc["pixel_values"], enc["image_sizes"],
                                           vision_feature_layer=-1,
                                           vision_feature_select_strategy="default")
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    n_feat = sum(f.shape[0] for f in feats)
    assert int(is_img.sum()) == n_feat > 16  # more than one tile's 16 patches
    mask = image_mask_hook(image_id, 1.0, torch.Generator().manual_seed(0))(
        enc["input_ids"], enc["attention_mask"])  # ρ_th = 1: every image token masked
    assert not mask[is_img].any() and mask[~is_img].all()


@pytest.mark.slow
def test_tiny_llava_next_sft_bdhs_dpo_eval_end_to_end(world, tmp_path):
    """SFT builds and saves the LLaVA-1.6 stand-in; BDHS, LoRA DPO (γ = 0.5, p = 0.5, the
    online pairs judged and cached) and every benchmark load it by directory."""
    from mmablate.studies.mmalign.bdhs import bdhs_generate
    from mmablate.studies.mmalign.data import load_povid
    from mmablate.studies.mmalign.dpo import train_dpo
    from mmablate.studies.mmalign.evaluate import BENCHMARKS, evaluate, load_benchmarks
    from mmablate.studies.mmalign.judge import make_judge
    from mmablate.studies.mmalign.model import load
    from mmablate.studies.mmalign.sft import train_sft

    w = world / "w"
    sft = train_sft(_sft_cfg(w, "llava_next"), tmp_path / "sft", progress=False)
    assert sft["steps"] == 2
    base = str(tmp_path / "sft/model")
    model, proc = load(base)
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"

    class Sim:
        def cosine(self, a, b):
            return [0.5] * len(a)

    pairs = load_povid(w / "povid/povid_pairs.json", w / "images")
    recs, st = bdhs_generate(model, proc, pairs, {"rho_th": 0.99, "sim_threshold": 0.97,
                                                  "max_tries": 2, "flip_prob": 0.5,
                                                  "max_new_tokens": 4}, Sim(), 0, progress=False)
    assert st["n_pairs"] == len(pairs)
    bf = tmp_path / "bdhs.jsonl"
    bf.write_text("".join(json.dumps(r) + "\n" for r in recs))
    judge = make_judge({"kind": "oracle"}, str(w / "scenes.jsonl"))
    cfg = {"model": {"base": base, "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                            "target_modules": ["q_proj", "v_proj"]}},
           "pairs": {"file": str(w / "povid/povid_pairs.json"), "images": str(w / "images")},
           "bdhs_file": str(bf), "bdhs": {"gamma": 0.5},
           "mixed_dpo": {"p": 0.5, "max_new_tokens": 4, "batch_size": 4}, "dpo": {"beta": 0.1},
           "train": {"steps": 2, "batch_size": 2, "effective_batch": 4, "lr": 1e-3, "warmup": 0,
                     "log_every": 1, "ckpt_every": 10, "grad_checkpointing": True}}
    model, proc, summary = train_dpo(cfg, 0, tmp_path / "dpo", judge=judge, progress=False,
                                     save_to=tmp_path / "dpo/model")
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    assert (tmp_path / "dpo/model/adapter_config.json").is_file()  # LoRA: the adapter only
    assert summary["mix"]["online"] > 0 and list((tmp_path / "dpo/online").glob("step*.json"))
    merged, proc2 = load(str(tmp_path / "dpo/model"))  # base + adapter, merged
    assert type(merged).__name__ == "LlavaNextForConditionalGeneration"
    b = {"pope": {"files": {sp: str(w / f"pope/coco_pope_{sp}.json")
                            for sp in ("random", "popular", "adversarial")},
                  "images": str(w / "images")},
         "mmhal": {"file": str(w / "mmhal/response_template.json"), "images": str(w / "images")},
         "llavaw": {"questions": str(w / "llavaw/questions.jsonl"),
                    "answers": str(w / "llavaw/answers_gpt4.jsonl"), "images": str(w / "images")},
         "mmvet": {"file": str(w / "mmvet/mm-vet.json"), "images": str(w / "images")},
         "vqat": {"file": str(w / "textvqa/TextVQA_0.5.1_val.json"), "images": str(w / "images")},
         "gqa": {"file": str(w / "gqa/testdev_balanced_questions.json"),
                 "images": str(w / "images")},
         "recall_coco": {"file": str(w / "coco/instances_val.json"), "images": str(w / "images"),
                         "subset": "pope"}}
    ecfg = {"benchmarks": b, "describe_prompt": "describe the image .", "max_new_tokens": 6,
            "max_new_tokens_short": 3, "batch_size": 8}
    m, chance, _ = evaluate(merged, proc2, ecfg, load_benchmarks(ecfg), judge)
    assert {"pope", "mmhal", "mmhalv", "llavaw", "mmvet", "vqat", "gqa", "recall_coco"} <= set(m)
    one, _, _ = evaluate(merged, proc2, ecfg, load_benchmarks(ecfg, ["gqa"]), judge)
    assert one == {"gqa": m["gqa"]} and len(BENCHMARKS) == 7  # a benchmark alone: the same
