"""``python spread_ddp.py <out.json>``: PredictionSpread under 2 real DDP processes (gloo, Lightning's
ddp launcher) on 301 distinct predictions, against the same callback fed all of them in one process.
Rank 0 writes {"ddp": ..., "one": ...} to out.json (the tests compare them)."""

import json
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from r2n2.data.samplers import ShardSampler
from r2n2.evaluation.spread import PredictionSpread
from r2n2.train.distributed import close_process_group

# 301 (odd: unequal shards; more than MAX_PAIRWISE = 256, so which samples are kept matters: every
# 2nd), fuller with the index, so that another subset gives other statistics
N = 301
LOGITS = (
    torch.randn(N, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    + torch.linspace(-3, 3, N)[:, None, None, None]
)


class Identity(L.LightningModule):
    """The 'network' returns its input as logits, so each test sample's prediction is known.
    ``logits: (N, 32, 32, 32)``, scored in batches of ``batch_size``, each rank its ``ShardSampler`` shard."""

    def __init__(self, logits: torch.Tensor = LOGITS, batch_size: int = 16):
        super().__init__()
        self.net = torch.nn.Identity()
        self.logits, self.batch_size = logits, batch_size

    def test_step(self, batch, batch_idx):
        self.net(batch[0])

    def test_dataloader(self):
        sampler = ShardSampler(len(self.logits), self.global_rank, self.trainer.world_size)
        return DataLoader(TensorDataset(self.logits), batch_size=self.batch_size, sampler=sampler)


def main(out: str) -> None:
    spread = PredictionSpread()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        use_distributed_sampler=False,
        logger=False,
        callbacks=[spread],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(Identity())
    if trainer.is_global_zero:
        one = PredictionSpread()
        one.reset(total=len(LOGITS))  # as on_test_start does for the whole split
        one.update(torch.sigmoid(LOGITS))
        with open(out, "w") as f:
            json.dump(
                {
                    "ddp": spread.compute(),
                    "one": one.compute(),
                    "n": [spread.n, one.n],
                    "kept": [spread.kept_index, one.kept_index],
                },
                f,
            )
    close_process_group()  # as train.py: a gloo group left open aborts some exits


if __name__ == "__main__":
    main(sys.argv[1])
