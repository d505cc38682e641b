"""Why the report's model sits on the mean shape: follow the signal through it while it trains.

For each variant, train on the synthetic dataset (bf16, Adam 1e-3, batch 16) and every N steps
measure on a fixed batch of 32 validation images:

- feature CV: between-image std of the encoder's 256-d feature / its mean magnitude, i.e. how much
  of what the encoder outputs depends on the image (0 = every image gives the same feature);
- code std: between-image std of the recurrent state h (what the decoder sees);
- output std: between-image std of the predicted probabilities (0 = the same shape for every image);
- saturated: share of GRU units (one view, h0 = 0) whose update gate z > 0.99 (the unit keeps h0 = 0
  whatever the image) or whose candidate |n| > 0.99 (tanh flat): no signal and no gradient pass;
- the training loss (mean of the last N steps) and the loss of the global mean shape on that batch.

    python benchmarks/plateau_diagnostics.py --steps 300 --every 50
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from r2n2.data.datamodule import R2N2DataModule, collate
from r2n2.data.sources import SyntheticSource
from r2n2.data.transforms import to_images
from r2n2.models import SeedModel

VARIANTS = {
    "paper": {},
    "kaiming init": {"encoder": {"init": "kaiming"}},
    "batchnorm": {"encoder": {"norm": "batch"}},
    "up-conv decoder": {"decoder": {"name": "upconv"}},
}


@torch.no_grad()
def probe(model: SeedModel, images: torch.Tensor) -> dict:
    model.eval()
    f = model.encoder(images.flatten(0, 1))  # (B, 256)
    h = model.recurrent(f[:, None])  # (B, H)
    p = torch.sigmoid(model.decoder(h).float())  # (B, 32, 32, 32)
    model.train()
    return {
        "feature CV": float(f.std(0).mean() / f.abs().mean().clamp_min(1e-12)),
        "code std": float(h.std(0).mean()),
        "output std": float(p.std(0).mean()),
        "saturated": gru_saturation(model.recurrent.rnn, f),
    }


def gru_saturation(gru: torch.nn.GRU, x: torch.Tensor) -> float:
    """Share of (image, unit) pairs where a one-step GRU from h0 = 0 is saturated: z > 0.99 or |n| > 0.99.

    nn.GRU with h0 = 0: r, z = sigmoid(W_i{r,z} x + b_i{r,z} + b_h{r,z}); n = tanh(W_in x + b_in + r * b_hn).
    """
    w, b_i, b_h = gru.weight_ih_l0, gru.bias_ih_l0, gru.bias_hh_l0
    gi = x @ w.T + b_i  # (B, 3H): r, z, n parts
    H = gru.hidden_size
    r = torch.sigmoid(gi[:, :H] + b_h[:H])
    z = torch.sigmoid(gi[:, H : 2 * H] + b_h[H : 2 * H])
    n = torch.tanh(gi[:, 2 * H :] + r * b_h[2 * H :])
    return float(((z > 0.99) | (n.abs() > 0.99)).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--data-dir", default="data")
    args = ap.parse_args()
    # the data of docs/ablation.md section 2: 32 objects x 24 views per category (the default then)
    dm = R2N2DataModule(
        SyntheticSource(os.path.join(args.data_dir, "synthetic"), objects_per_category=32, views=24),
        cache_dir=os.path.join(args.data_dir, "cache"),
        batch_size=16,
        eval_batch_size=32,
    )
    dm.prepare_data()
    dm.setup()
    val = dm.datasets["val"]  # 32 samples spread over all val objects (the loader's order is by object)
    fixed = collate([val[int(i)] for i in torch.linspace(0, len(val) - 1, 32).long()])
    fixed["images"] = to_images(fixed["rgba"])
    train_mean = dm.datasets["train"]
    from r2n2.evaluation.baselines import mean_shapes

    mean_shape = mean_shapes(train_mean)[0].clamp(1e-4, 1 - 1e-4)
    mean_loss = float(F.binary_cross_entropy(mean_shape.expand_as(fixed["voxels"]), fixed["voxels"]))
    print(f"loss of the global mean shape on the probe batch: {mean_loss:.4f}\n")
    print(
        "| variant | step | train loss | feature CV | code std | output std | saturated GRU units |\n"
        "|---|---|---|---|---|---|---|"
    )
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        model = SeedModel(**kw)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        losses, step, start = [], 0, time.perf_counter()
        print(f"| {name} | 0 | - | " + " | ".join(f"{v:.2e}" for v in probe(model, fixed["images"]).values()) + " |")
        while step < args.steps:
            for batch in dm.train_dataloader():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = model(to_images(batch["rgba"]))
                loss = F.binary_cross_entropy_with_logits(logits.float(), batch["voxels"].float())
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses.append(loss.item())
                step += 1
                if step % args.every == 0:
                    stats = probe(model, fixed["images"])
                    print(
                        f"| {name} | {step} | {sum(losses[-args.every :]) / args.every:.4f} | "
                        + " | ".join(f"{v:.2e}" for v in stats.values())
                        + " |",
                        flush=True,
                    )
                if step >= args.steps:
                    break
        print(f"<!-- {name}: {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
