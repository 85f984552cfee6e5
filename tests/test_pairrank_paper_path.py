"""Pair ranking's paper-scale path on small stand-ins in the real formats: Pick-a-Pic parquet
shards with JPEG bytes (streaming, resumable scoring), THUDM's ImageReward checkpoint layout."""
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mmablate.errors import CheckpointError
# the ImageReward stand-in's sizes and builder (the rehearsal's: mmablate.rehearsal.pairrank)
from mmablate.rehearsal.pairrank import (IR_IMG as IMG, IR_PATCH as PATCH, IR_TDEPTH as TDEPTH,
                                         IR_TW as TW, IR_VDEPTH as VDEPTH, IR_VW as VW,
                                         image_reward_state as standin_state)


# ---- ImageReward: a random stand-in checkpoint in the original key layout --------------------

BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle",
              "square", "cat", "on", "the", "left", "photo", "of"]


def _bert_vocab(tmp_path):
    from mmablate.rehearsal.pairrank import bert_tokenizer

    return bert_tokenizer(tmp_path / "tok", BERT_WORDS)


def reference_reward(sd, pixels, ids, mask):
    """ImageReward's score transcribed from the authors' modules on the raw state dict: BLIP's
    ViT (timm blocks, LayerNorm eps 1e-6), med.py's BERT in multimodal mode (self-attention with
    the (1 − mask)·−10000 extended mask, cross-attention to every image token), the first token,
    the MLP without activations, then (r − mean) / std."""
    def lin(x, p):
        return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])

    def ln(x, p, eps):
        return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps)

    def heads(x, h):
        B, N, C = x.shape
        return x.view(B, N, h, C // h).transpose(1, 2)

    v = "blip.visual_encoder."
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    B = x.shape[0]
    x = torch.cat([sd[v + "cls_token"].expand(B, -1, -1), x], 1)
    x = x + sd[v + "pos_embed"][:, :x.size(1)]
    nh = VW // 64
    for i in range(VDEPTH):
        b = f"{v}blocks.{i}."
        h = ln(x, b + "norm1", 1e-6)
        N, C = h.shape[1], h.shape[2]
        qkv = lin(h, b + "attn.qkv").reshape(B, N, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
        att = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (C // nh) ** -0.5).softmax(-1)
        x = x + lin((att @ qkv[2]).transpose(1, 2).reshape(B, N, C), b + "attn.proj")
        x = x + lin(F.gelu(lin(ln(x, b + "norm2", 1e-6), b + "mlp.fc1")), b + "mlp.fc2")
    img = ln(x, v + "norm", 1e-6)
    t = "blip.text_encoder."
    L = ids.shape[1]
    h = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][:L]
    h = ln(h, t + "embeddings.LayerNorm", 1e-12)
    ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
    th = TW // 64

    def attend(h, p, kv, bias):
        q, k, vv = heads(lin(h, p + ".self.query"), th), heads(lin(kv, p + ".self.key"), th), heads(lin(kv, p + ".self.value"), th)
        s = q @ k.transpose(-1, -2) / math.sqrt(TW // th)
        if bias is not None:
            s = s + bias
        o = (s.softmax(-1) @ vv).transpose(1, 2).reshape(h.shape)
        return ln(lin(o, p + ".output.dense") + h, p + ".output.LayerNorm", 1e-12)

    for i in range(TDEPTH):
        b = f"{t}encoder.layer.{i}."
        h = attend(h, b + "attention", h, ext)
        h = attend(h, b + "crossattention", img, None)
        h = ln(lin(F.gelu(lin(h, b + "intermediate.dense")), b + "output.dense") + h,
               b + "output.LayerNorm", 1e-12)
    r = h[:, 0]
    for k in (0, 2, 4, 6, 7):
        r = F.linear(r, sd[f"mlp.layers.{k}.weight"], sd[f"mlp.layers.{k}.bias"])
    return (r.squeeze(1) - 0.16717362830052426) / 1.0333394966054072


def test_image_reward_key_mapping_round_trips_and_matches_the_authors_forward(tmp_path):
    from mmablate.studies.pairrank.image_reward import load_image_reward, map_keys, unmap_keys
    from mmablate.studies.pairrank.rewards import clip_pixels, load_scorer

    tok_dir, vocab = _bert_vocab(tmp_path)
    sd = standin_state(vocab)
    torch.save(sd, tmp_path / "ImageReward.pt")
    back = unmap_keys(*map_keys(sd))
    dropped = {k for k in sd if k.startswith(("blip.vision_proj", "blip.text_proj")) or k.endswith("position_ids")}
    assert set(back) == set(sd) - dropped and all(torch.equal(back[k], sd[k]) for k in back)
    model, tok = load_image_reward(tmp_path / "ImageReward.pt", str(tok_dir))
    assert model.image_size == IMG and len(tok) == vocab
    # the loaded modules hold exactly the checkpoint's tensors under their new names
    got = unmap_keys(model.vision.state_dict(), {k: v for k, v in model.text.state_dict().items()
                                                  if not k.endswith("position_ids")},
                     model.mlp.state_dict())
    assert all(torch.equal(got[k], sd[k]) for k in back)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, IMG, IMG, 3), dtype=np.uint8)
    prompts = ["a red circle", "a blue square on the left", "a photo of a cat"]
    t = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        want = reference_reward(sd, clip_pixels(images, IMG), t.input_ids, t.attention_mask)
    scorer = load_scorer({"source": "paper", "kind": "image_reward",
                          "checkpoint": str(tmp_path / "ImageReward.pt"), "tokenizer": str(tok_dir)})
    got = scorer(images, prompts)
    assert scorer.input_size == IMG
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    assert np.ptp(got) > 1e-3  # the images and prompts give different rewards
    # a wrong or foreign checkpoint is a clear error naming the file
    bad = dict(sd)
    bad["blip.visual_encoder.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt: keys outside ImageReward's layout"):
        load_image_reward(tmp_path / "bad.pt", str(tok_dir))


# ---- streaming Pick-a-Pic: the same pairs in the same order as the whole-table reader ----------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from mmablate.data.pickapic import write_standin

    d = tmp_path_factory.mktemp("pickapic")
    write_standin(d, n_pairs=90, n_shards=3, size=16, row_group_size=7, tie_prob=0.2)
    return d


def old_whole_table(path):
    """Pick-a-Pic as the loader read it before streaming: every shard concatenated into one
    frame, ties dropped, winner first (transcribed from the previous `load_pairs`)."""
    from mmablate.data.pickapic import decode

    df = pd.concat([pd.read_parquet(f) for f in sorted(path.glob("*.parquet"))], ignore_index=True)
    df = df[df.label_0 != df.label_1].reset_index(drop=True)
    first = df.label_0 > df.label_1
    win = [decode(a if f else b, "w") for a, b, f in zip(df.jpg_0, df.jpg_1, first)]
    lose = [decode(b if f else a, "l") for a, b, f in zip(df.jpg_0, df.jpg_1, first)]
    return df.caption.tolist(), np.stack(win), np.stack(lose)


@pytest.mark.parametrize("workers,max_rows", [(0, 1024), (2, 3)])
def test_streaming_equals_the_whole_table(shards, workers, max_rows):
    from mmablate.data.pickapic import load_pairs, stream_pairs

    caps, win, lose = old_whole_table(shards)
    units = list(stream_pairs(shards, num_workers=workers, max_rows=max_rows))
    assert [c for u in units for c in u["caption"]] == caps == load_pairs(shards).captions
    got_w = np.concatenate([u["winner"] for u in units if u["caption"]])
    got_l = np.concatenate([u["loser"] for u in units if u["caption"]])
    assert np.array_equal(got_w, win) and np.array_equal(got_l, lose)
    assert sorted({u["shard"] for u in units}) == [0, 1, 2]


def test_streaming_selected_rows_and_resizing(tmp_path):
    from mmablate.data.pickapic import kept_rows, shard_files, stream_pairs, write_standin

    write_standin(tmp_path, n_pairs=30, n_shards=3, sizes=[(40, 30), (24, 24)], row_group_size=4)
    files = shard_files(tmp_path)
    want = {1: kept_rows(files[1])[[0, 2]], 2: kept_rows(files[2])[-1:]}
    units = [u for u in stream_pairs(tmp_path, size=16, rows=want) if u["caption"]]
    assert {(u["shard"], int(r)) for u in units for r in u["rows"]} == \
        {(s, int(r)) for s, rs in want.items() for r in rs}
    assert all(u["winner"].shape[1:] == (16, 16, 3) for u in units)
    with pytest.raises(Exception, match="images of different sizes"):
        list(stream_pairs(tmp_path))


def _mean_scorer(log):
    """A real scoring function (mean pixel value plus prompt length) that records its calls."""
    from mmablate.studies.pairrank.rewards import Scorer

    def fn(images, prompts):
        log.append(len(images))
        return np.asarray(images, float).mean(axis=(1, 2, 3)) + np.array([len(p) for p in prompts])

    return Scorer("hpsv2", fn, "mean", None)


def test_scoring_per_shard_resumes_after_a_kill(tmp_path, shards, monkeypatch):
    from mmablate.studies.pairrank import rewards

    calls = []
    monkeypatch.setattr(rewards, "load_scorer", lambda r, d: _mean_scorer(calls))
    cfg = {"pairs": str(shards), "reward": {"source": "twin", "path": "unused"}, "batch_size": 8}
    whole = rewards.score_pairs(cfg, tmp_path / "a/scores.npz", progress=False)
    n_calls_whole = len(calls)
    # killed while scoring the second shard: its file is never half-written
    real = rewards.Scorer.__call__
    state = {"n": 0}
    n0 = int(np.load(tmp_path / "a/scores.npz")["shard_counts"][0])

    def dying(self, images, prompts, batch=256):
        state["n"] += 1
        if state["n"] > 2 * math.ceil(n0 / 8):  # the first call of the second shard
            raise KeyboardInterrupt("killed")
        return real(self, images, prompts, batch)

    monkeypatch.setattr(rewards.Scorer, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        rewards.score_pairs(cfg, tmp_path / "b/scores.npz", progress=False)
    assert len(list((tmp_path / "b/shards").glob("*.npz"))) == 1
    assert not (tmp_path / "b/scores.npz").exists()
    monkeypatch.setattr(rewards.Scorer, "__call__", real)
    calls.clear()
    resumed = rewards.score_pairs(cfg, tmp_path / "b/scores.npz", progress=False)
    assert resumed["resumed_shards"] == 1 and len(calls) < n_calls_whole
    a, b = np.load(tmp_path / "a/scores.npz"), np.load(tmp_path / "b/scores.npz")
    assert np.array_equal(a["winner"], b["winner"]) and np.array_equal(a["loser"], b["loser"])
    # the same scores as scoring the old whole table at once
    caps, win, lose = old_whole_table(shards)
    sc = _mean_scorer([])
    np.testing.assert_array_equal(a["winner"], sc(win, caps))
    np.testing.assert_array_equal(a["loser"], sc(lose, caps))
    assert list(a["shard_counts"]) == [len(np.load(p)["winner"]) for p in
                                       sorted((tmp_path / "a/shards").glob("*.npz"))]
    assert whole["n_pairs"] + whole["n_ties_dropped"] == 90


# ---- Diffusion-DPO's data: the selected pairs cached once as sharded, memory-mapped files ------
def test_latent_cache_gives_the_selected_pairs_in_selection_order_and_resumes(tmp_path, shards, monkeypatch):
    from mmablate.data.pickapic import load_pairs
    from mmablate.studies.pairrank.diffusion import T2I, to_pixels
    from mmablate.studies.pairrank.dpo import cache_latents
    from mmablate.training.harness import Harness

    n = len(load_pairs(shards))
    idx = [n - 1, 3, 40, 0, 41, 17, n - 2]  # best-first order, across the three shards
    sel = {"pairs": str(shards), "indices": idx}
    t2i = T2I(None, {}, None, vae=None, image_size=16)  # the pixel-space model: identity encoder
    h = Harness({"batch_size": 2}, seed=0, out_dir=tmp_path, progress=False)
    got = cache_latents(sel, t2i, tmp_path / "lat", seed=0, h=h, progress=False)
    old = load_pairs(shards).subset(idx)  # what DPO trained on before: the whole table's subset
    w, l, ids = got.__getitems__([0, 1, 2, 3, 4, 5, 6])
    assert torch.equal(w, to_pixels(old.images("winner"))) and torch.equal(l, to_pixels(old.images("loser")))
    assert w.stride() == to_pixels(old.images("winner")).stride()  # the same layout (conv arithmetic)
    assert got.captions == old.captions and ids.tolist() == list(range(7))
    w2, _, _ = got.__getitems__([5, 0, 5])
    assert torch.equal(w2, w[[5, 0, 5]])
    assert len(list((tmp_path / "lat").glob("*.json"))) == 3  # one latent shard per input shard
    # a second job start reuses every finished shard; a changed selection re-encodes its shard
    calls = []
    real = T2I.to_latent
    monkeypatch.setattr(T2I, "to_latent", lambda self, x, generator=None: calls.append(len(x)) or real(self, x))
    cache_latents(sel, t2i, tmp_path / "lat", seed=0, h=h, progress=False)
    assert calls == []
    sel2 = {"pairs": str(shards), "indices": idx[:-1]}  # one pair fewer in the third shard
    again = cache_latents(sel2, t2i, tmp_path / "lat", seed=0, h=h, progress=False)
    assert len(again) == 6 and calls == [1, 1]  # that shard only: its one pair, winner and loser
    assert torch.equal(again.__getitems__([0])[0], w[:1])


def test_constant_with_warmup_is_diffusers_schedule():
    from diffusers.optimization import get_constant_schedule_with_warmup

    from mmablate.training.schedule import make_scheduler

    def lrs(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        sch = make(opt)
        out = []
        for _ in range(12):
            out.append(sch.get_last_lr()[0])
            opt.step()
            sch.step()
        return out

    assert lrs(lambda o: make_scheduler(o, 5, 12, "constant")) == \
        pytest.approx(lrs(lambda o: get_constant_schedule_with_warmup(o, 5)))


def test_paper_recipe_is_the_sd15_launchers():
    """The paper scale's DPO block: Diffusion-DPO's sd15 launcher numbers, accepted by the
    harness's check (2,048 = 32 accumulation steps of 64 over 8 processes)."""
    import yaml

    from mmablate.config import load
    from mmablate.training.harness import check

    from .conftest import REPO

    cfg = load([REPO / "config/config.yaml", REPO / "config/scales/paper.yaml"])
    d = cfg["studies"]["pairrank"]["dpo"]
    assert (d["effective_batch"], d["beta"], d["steps"], d["warmup"], d["lr_schedule"],
            d["weight_decay"]) == (2048, 5000, 2000, 500, "constant", 0.01)
    assert d["lr"] == pytest.approx(1e-8 * 2048)
    assert check(d, "dpo", world_size=8) == {"accum": 32, "micro_batch": 8, "effective_batch": 2048}
    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert d["batch_size"] % prof["set-resources"]["pairrank_dpo"]["gpu"] == 0
    assert cfg["studies"]["pairrank"]["eval"]["sampling"] == {"steps": 50, "guidance": 7.5,
                                                              "batch": 32, "precision": "fp16"}
