"""A toy regression trained on the harness (the standard step path), run by
test_e2e_launch_torchrun in one process or under torchrun:
``python harness_toy.py OUT BATCH EFFECTIVE``."""
import sys

import torch

from mmablate.training import harness as H


def run(out, batch, effective, steps=6):
    torch.manual_seed(0)
    h = H.Harness({"batch_size": batch, "effective_batch": effective, "max_grad_norm": 1.0},
                  seed=1, out_dir=out, where="toy", progress=False, threads=1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    h.setup(model, lambda m: torch.optim.AdamW(m.parameters(), lr=0.01))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    data = H.Tensors(x, x.sum(1, keepdim=True).sin())

    def step(b):
        return {"loss": torch.nn.functional.mse_loss(h.model(b[0]), b[1])}

    h.fit(step, data, steps=steps, ckpt_every=3, log_every=1,
          order=h.sampled_order(len(data), torch.Generator().manual_seed(2)))
    h.save_final(model.state_dict(), f"{out}/model.pt")
    return h


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
