"""A word-level tokenizer for the synthetic world's vocabulary.

open_clip's default BPE vocabulary makes a 49,408×width token embedding, larger than a whole
tiny model; the world's grammar needs a few hundred words. This tokenizer has open_clip's call
interface (texts → LongTensor [N, context_length]) and ids pad=0, start=1, end=2, so the text
tower pools at the end token with ``pool_type="eos", eos_id=2`` in the model config.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

PAD, SOT, EOT, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL = [PAD, SOT, EOT, UNK]


class WordTokenizer:
    def __init__(self, words, context_length: int = 24):
        self.itos = SPECIAL + [w for w in words if w not in SPECIAL]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def eot_id(self) -> int:
        return self.stoi[EOT]

    def words(self, text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    def encode(self, text: str) -> list[int]:
        unk = self.stoi[UNK]
        return [self.stoi.get(w, unk) for w in self.words(text)]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                break
            if i > self.stoi[UNK]:
                out.append(self.itos[i])
        return " ".join(out)

    def __call__(self, texts, context_length: int | None = None):
        import torch

        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for k, t in enumerate(texts):
            ids = [self.stoi[SOT]] + self.encode(t)[: n - 2] + [self.eot_id]
            out[k, : len(ids)] = torch.tensor(ids)
        return out

    def save(self, path):
        Path(path).write_text(json.dumps({"itos": self.itos, "context_length": self.context_length}))

    @classmethod
    def load(cls, path):
        d = json.loads(Path(path).read_text())
        return cls(d["itos"], d["context_length"])
