"""Difference captioners: a language model writes how the first image differs from the second,
given only the two images' descriptions (the paper prompts LLaMA-2-13B-chat with two COCO captions).

One backend interface (`Captioner.caption(pairs) -> list[str]`) over transformers, one class per
model family:

* `CausalCaptioner` — chat/causal LMs (LLaMA-2-chat, the paper's; GPT-family for the GPT-3 row):
  ``pipeline("text-generation")``; with ``chat: true`` the prompt is sent as a chat message and
  the tokenizer's chat template is applied (LLaMA-2-chat's ``[INST]`` format);
* `MaskedCaptioner` — BERT: ``pipeline("fill-mask")`` fills a comparison template
  ``<prompt> [MASK] … [MASK]`` (all masks decoded at once, as a masked LM does; a filler token
  marks unused slots);
* `Seq2SeqCaptioner` — T5: the prompt is encoded, the difference decoded. transformers 5 has no
  text2text-generation pipeline any more, so this one calls ``model.generate`` directly.
* `TemplateCaptioner` — writes the ground-truth difference from the pair's known attributes
  (`mmablate.world.pairs.difference`); the reference against which caption accuracy is measured.

At paper scale each model is loaded by hub id (``from_pretrained``); on the claimed GPU every
family (Llama-2-13B-chat, GPT-J-6B, BERT-large, Flan-T5-XL) loads in bf16 straight onto it
(`load_kwargs`) and generates greedily in batches of ``captions.batch_size`` (left padding for
the causal LMs); on the CPU (the tiny scale) in fp32. At the tiny scale no weights
exist, so `train_captioner` builds a small model of the family from a config
(LlamaForCausalLM / GPT2LMHeadModel / BertForMaskedLM / T5ForConditionalGeneration) with a
word-level tokenizer, trains it from scratch on the world's description corpus (pairs of scene
captions → difference texts) and saves both with ``save_pretrained``, so the same loading code
serves both scales.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ...errors import ConfigError, DataError

ARCHS = {"llama": "causal", "gpt2": "causal", "bert": "masked", "t5": "seq2seq"}
FILLER = "<none>"  # the masked LM's filler for unused template slots


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def normalise(text: str) -> str:
    return " ".join(words(text))


def check_captioner(name: str, spec: dict, where: str) -> None:
    """Checks across a captioner's keys (its keys' types and the family are the schema's)."""
    fam = spec["family"]
    if fam == "template":
        return
    if spec.get("model") is None:
        arch = spec.get("arch")
        if ARCHS.get(arch) != fam:
            raise ConfigError(f"{where}.arch: {arch!r} cannot be trained as a {fam} captioner; "
                              f"known: {sorted(a for a, f in ARCHS.items() if f == fam)}")
        if not isinstance(spec.get("size"), dict) or not isinstance(spec.get("train"), dict):
            raise ConfigError(f"{where}: a captioner trained here (model: null) needs `size` and "
                              f"`train` blocks")
    if "{a}" not in spec.get("prompt", "") or "{b}" not in spec.get("prompt", ""):
        raise ConfigError(f"{where}.prompt: must contain {{a}} and {{b}} (the two descriptions)")


# ---- the tiny scale's tokenizer and models ------------------------------------------------------
def build_tokenizer(texts, family: str):
    """A word-level fast tokenizer (tokenizers library) over the corpus, in transformers' format."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "[MASK]", "[SEP]", FILLER]
    vocab = {s: i for i, s in enumerate(specials)}
    for t in texts:
        for w in pre_tokenizers.Whitespace().pre_tokenize_str(t.lower()):
            vocab.setdefault(w[0], len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = None
    from tokenizers import normalizers

    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if family == "seq2seq":  # T5 appends </s> to every sequence
        tk.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                          special_tokens=[("</s>", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>", mask_token="[MASK]",
                                  sep_token="[SEP]")
    tok.padding_side = "left" if family == "causal" else "right"
    return tok


def build_model(arch: str, size: dict, tok, max_len: int):
    import transformers as tf

    v = len(tok)
    h, L, nh = size["hidden"], size["layers"], size["heads"]
    if arch == "llama":
        cfg = tf.LlamaConfig(vocab_size=v, hidden_size=h, intermediate_size=2 * h,
                             num_hidden_layers=L, num_attention_heads=nh, num_key_value_heads=nh,
                             max_position_embeddings=max_len, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             tie_word_embeddings=True)
        return tf.LlamaForCausalLM(cfg)
    if arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=v, n_embd=h, n_layer=L, n_head=nh, n_positions=max_len,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id)
        return tf.GPT2LMHeadModel(cfg)
    if arch == "bert":
        cfg = tf.BertConfig(vocab_size=v, hidden_size=h, num_hidden_layers=L,
                            num_attention_heads=nh, intermediate_size=2 * h,
                            max_position_embeddings=max_len, pad_token_id=tok.pad_token_id)
        return tf.BertForMaskedLM(cfg)
    if arch == "t5":
        cfg = tf.T5Config(vocab_size=v, d_model=h, d_ff=2 * h, d_kv=h // nh, num_layers=L,
                          num_heads=nh, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
        return tf.T5ForConditionalGeneration(cfg)
    raise ConfigError(f"unknown captioner arch {arch!r}; known: {sorted(ARCHS)}")


def _examples(spec: dict, rows: list[dict], tok, slots: int):
    """Token ids and labels (−100 = not scored) of the training corpus, per family."""
    fam = ARCHS[spec["arch"]]
    out = []
    for r in rows:
        prompt = spec["prompt"].format(a=r["caption_a"], b=r["caption_b"])
        tgt = r["difference"]
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(tgt, add_special_tokens=False)["input_ids"]
        if fam == "causal":
            ids = [tok.bos_token_id] + p + t + [tok.eos_token_id]
            labels = [-100] * (1 + len(p)) + t + [tok.eos_token_id]
            out.append((ids, labels))
        elif fam == "masked":
            # the masking is drawn per batch (`_mask_suffix`); here: prompt [SEP] and the slots
            t = (t + [tok.convert_tokens_to_ids(FILLER)] * slots)[:slots]
            out.append((p + [tok.sep_token_id], t))
        else:
            out.append((p + [tok.eos_token_id], t + [tok.eos_token_id]))
    return out


def _mask_suffix(prefix, target, mask_id, g):
    """Masks the slots from a random position k on (k uniform): the masked LM learns to fill
    the template left to right, the order `MaskedCaptioner` decodes in."""
    import torch

    k = int(torch.randint(len(target), (1,), generator=g))
    ids = prefix + target[:k] + [mask_id] * (len(target) - k)
    labels = [-100] * (len(prefix) + k) + target[k:]
    return ids, labels


def _pad(seqs, value):
    import torch

    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs])


def train_captioner(spec: dict, rows: list[dict], out_dir, seed: int = 0, threads: int = 1,
                    progress: bool = True) -> dict:
    """Trains a small captioner of `spec`'s family from scratch on (captions → difference) rows.

    On the training harness (`mmablate.training.harness`); the data order is today's: indices
    drawn with replacement from one generator seeded `seed`, which (masked family) also draws
    the masking position of each example in the step. Gradients are clipped at norm 1
    (``train.max_grad_norm``, default 1.0). With ``num_workers`` > 0 the loader draws the next
    steps' indices ahead of this step's masking, so the masked family's numbers differ from
    ``num_workers: 0`` (the default); across N ranks each rank pads its own micro-batch and the
    token-mean loss is averaged over ranks (not the global token mean). No checkpoints unless
    ``train.ckpt_every`` is set (then in ``<out_dir>/../ckpt``).
    """
    import torch

    from ...training.harness import Harness
    from ...training.schedule import make_scheduler

    torch.manual_seed(seed)  # the harness's set-up draws nothing from it
    out_dir = Path(out_dir)
    tc = spec["train"]
    h = Harness(dict(tc, max_grad_norm=tc.get("max_grad_norm", 1.0)), seed=seed,
                out_dir=out_dir.parent, where="train", threads=threads, progress=progress)
    fam = ARCHS[spec["arch"]]
    slots = spec.get("slots", 12)
    texts = [spec["prompt"].format(a=r["caption_a"], b=r["caption_b"]) + " " + r["difference"]
             for r in rows]
    tok = build_tokenizer(texts, fam)
    ex = _examples(spec, rows, tok, slots)
    max_len = max(max(len(i), len(l)) for i, l in ex) + 8
    model = build_model(spec["arch"], spec["size"], tok, max(64, max_len))
    h.setup(model, lambda m: torch.optim.AdamW(m.parameters(), lr=tc["lr"], weight_decay=0.01),
            lambda opt: make_scheduler(opt, tc.get("warmup", 20), tc["steps"]))
    g = torch.Generator().manual_seed(seed)

    def step(batch):
        ids = [b[0] for b in batch]
        labels = [b[1] for b in batch]
        if fam == "masked":
            ids, labels = zip(*[_mask_suffix(a, b, tok.mask_token_id, g) for a, b in zip(ids, labels)])
        x = _pad(ids, tok.pad_token_id).to(h.device)
        y = _pad(labels, -100).to(h.device)
        if fam == "seq2seq":
            mask = (x != tok.pad_token_id).long()
        else:
            mask = _pad([[1] * len(s) for s in ids], 0).to(h.device)
        return {"loss": h.model(input_ids=x, attention_mask=mask, labels=y).loss}

    result = h.fit(step, ex, steps=tc["steps"], ckpt_every=tc.get("ckpt_every"), log_every=20,
                   order=h.sampled_order(len(ex), g), collate=_as_list, columns=["step", "loss"],
                   summary_file=None, desc=f"captioner {spec['arch']}")
    if h.is_main:
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
        (out_dir / "mmablate_captioner.json").write_text(json.dumps({"family": fam, "slots": slots}))
    h.barrier()
    return {"arch": spec["arch"], "family": fam, "steps": tc["steps"],
            "final_loss": result["final_loss"],
            "params": sum(p.numel() for p in model.parameters()), "vocab": len(tok),
            "wall_s": result["wall_s"]}


def _as_list(batch):
    return batch


# ---- the backends -------------------------------------------------------------------------------
class Captioner:
    """Writes how the first image differs from the second from their two descriptions."""

    def __init__(self, spec: dict, source: str | None, batch_size: int = 64,
                 max_new_tokens: int = 16):
        self.spec, self.source = spec, source
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def prompts(self, pairs) -> list[str]:
        return [self.spec["prompt"].format(a=p["caption_a"], b=p["caption_b"]) for p in pairs]

    def caption(self, pairs) -> list[str]:
        raise NotImplementedError


def load_kwargs(device: str) -> dict:
    """``from_pretrained`` arguments: on a GPU the weights load straight onto it in bf16 (a
    13B model is 26 GB there, not 52 GB in fp32 staged on the host); on the CPU, fp32."""
    if device == "cuda":
        import torch

        return {"dtype": torch.bfloat16, "device_map": "cuda"}
    return {}


def _load(source, cls_name: str):
    import transformers as tf

    from ...device import torch_device

    dev = torch_device()  # generation on the GPU cli.main claimed, or the CPU
    try:
        tok = tf.AutoTokenizer.from_pretrained(source)
        model = getattr(tf, cls_name).from_pretrained(source, **load_kwargs(dev))
    except (OSError, ValueError) as e:
        raise DataError(f"captioner model {source!r} cannot be loaded: {e}") from None
    if dev != "cuda":
        model.to(dev)
    model.eval()
    return tok, model


def _pipeline(task: str, model, tok):
    from transformers import pipeline

    # a model placed by device_map stays where accelerate put it; otherwise name its device
    kw = {} if getattr(model, "hf_device_map", None) else {"device": model.device}
    return pipeline(task, model=model, tokenizer=tok, **kw)


class CausalCaptioner(Captioner):
    def caption(self, pairs):
        tok, model = _load(self.source, "AutoModelForCausalLM")
        tok.padding_side = "left"  # batched generation: prompts end where the answers start
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if self.spec.get("chat") and not getattr(tok, "chat_template", None):
            raise ConfigError(f"captioner {self.source!r}: `chat: true` but its tokenizer has no "
                              f"chat template (use a chat model, e.g. Llama-2-13b-chat-hf, or "
                              f"`chat: false`)")
        pipe = _pipeline("text-generation", model, tok)
        prompts = self.prompts(pairs)
        if self.spec.get("chat"):  # the tokenizer's chat template ([INST] … [/INST] for Llama-2)
            inputs = [[{"role": "user", "content": p}] for p in prompts]
        else:
            bos = tok.bos_token or ""
            inputs = [bos + p for p in prompts]
        outs = pipe(inputs, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                    do_sample=False, return_full_text=False, pad_token_id=tok.pad_token_id)
        texts = []
        for o in outs:
            g = o[0]["generated_text"]
            if isinstance(g, list):  # chat output: the assistant's message
                g = g[-1]["content"]
            texts.append(g.strip().split("\n")[0])
        return texts


class MaskedCaptioner(Captioner):
    def caption(self, pairs):
        tok, model = _load(self.source, "AutoModelForMaskedLM")
        meta = Path(self.source) / "mmablate_captioner.json"
        slots = json.loads(meta.read_text())["slots"] if meta.is_file() else \
            self.spec.get("slots", 12)
        pipe = _pipeline("fill-mask", model, tok)
        sep = f" {tok.sep_token} " if tok.sep_token else " "
        prompts = [p + sep for p in self.prompts(pairs)]
        filled = [[] for _ in prompts]
        # Left to right: each pass fills the first remaining [MASK] of the template.
        for k in range(slots):
            inputs = [p + " ".join(f + [tok.mask_token] * (slots - k)) for p, f in zip(prompts, filled)]
            outs = pipe(inputs, batch_size=self.batch_size, top_k=1)
            for f, o in zip(filled, outs):
                first = o[0] if isinstance(o[0], list) else o  # one mask left → a flat list
                f.append(first[0]["token_str"].strip() or FILLER)
        texts = []
        for f in filled:
            ws = [w for w in f if w not in (tok.pad_token, tok.sep_token, "")]
            if FILLER in ws:  # the filler ends the description
                ws = ws[:ws.index(FILLER)]
            texts.append(" ".join(ws))
        return texts


class Seq2SeqCaptioner(Captioner):
    def caption(self, pairs):
        import torch

        from tqdm import tqdm

        tok, model = _load(self.source, "AutoModelForSeq2SeqLM")  # on the GPU, bf16, as the others
        prompts, texts = self.prompts(pairs), []
        for i in tqdm(range(0, len(prompts), self.batch_size), desc="captions (seq2seq)",
                      mininterval=10):
            enc = tok(prompts[i:i + self.batch_size], return_tensors="pt",
                      padding=True).to(model.device)
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False)
            texts += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
        return texts


class TemplateCaptioner(Captioner):
    def caption(self, pairs):
        out = [p.get("difference", "") for p in pairs]
        if any(not t for t in out):
            raise DataError("the template captioner needs the pairs' ground-truth attributes "
                            "(a `difference` column); real image pairs have none")
        return out


BACKENDS = {"causal": CausalCaptioner, "masked": MaskedCaptioner, "seq2seq": Seq2SeqCaptioner,
            "template": TemplateCaptioner}


def make_captioner(name: str, spec: dict, source, **kw) -> Captioner:
    fam = spec.get("family")
    if fam not in BACKENDS:
        raise ConfigError(f"captioner {name!r}: unknown family {fam!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[fam](spec, source, **kw)


def _strip_article(phrase: str) -> str:
    ws = phrase.split()
    return " ".join(ws[1:] if ws[:1] in (["a"], ["an"], ["the"]) else ws)


def is_degenerate(text: str, pair: dict, filt: dict, vocab=None) -> str | None:
    """Why a generated difference is dropped (None = kept). The paper filters its LLM output."""
    ws = words(text)
    if not ws:
        return "empty"
    if len(ws) < filt.get("min_words", 2):
        return "too short"
    if len(ws) > filt.get("max_words", 30):
        return "too long"
    run = 1
    for a, b in zip(ws, ws[1:]):
        run = run + 1 if a == b else 1
        if run > filt.get("max_repeat", 2):
            return "repetition"
    if normalise(text) in (normalise(pair["caption_a"]), normalise(pair["caption_b"])):
        return "copies a description"
    if " instead of " in f" {normalise(text)} ":
        # "a red circle instead of a red circle", "… on the left instead of the left"
        this, _, that = normalise(text).partition(" instead of ")
        that = _strip_article(that).split()
        if that and this.split()[-len(that):] == that:
            return "states no difference"
    if vocab is not None and any(w not in vocab for w in ws):
        return "out of vocabulary"
    return None
