"""Zero-shot classification with CLIP: class text embeddings averaged over prompt templates."""
from __future__ import annotations


def class_embeddings(model, tokenizer, classnames, templates, batch: int = 256):
    import torch

    from ..device import module_device

    dev = module_device(model)
    embs = []
    with torch.no_grad():
        for name in classnames:
            toks = tokenizer([t.format(c=name) for t in templates]).to(dev)
            e = model.encode_text(toks, normalize=True).mean(0)
            embs.append(e / e.norm())
    return torch.stack(embs)


def zeroshot_topk(model, tokenizer, images, labels, classnames, templates, ks=(1, 3, 5),
                  batch: int = 512) -> dict:
    """Top-k accuracy (percent) of zero-shot classification, on the model's device."""
    import torch

    from ..device import module_device

    dev = module_device(model)
    model.eval()
    W = class_embeddings(model, tokenizer, classnames, templates)
    correct = {k: 0 for k in ks}
    with torch.no_grad():
        for i in range(0, len(images), batch):
            f = model.encode_image(images[i:i + batch].to(dev), normalize=True)
            top = (f @ W.T).topk(max(ks), dim=1).indices
            y = labels[i:i + batch, None].to(dev)
            for k in ks:
                correct[k] += (top[:, :k] == y).any(dim=1).sum().item()
    return {k: 100.0 * correct[k] / len(images) for k in ks}
