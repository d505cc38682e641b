"""``python gloo_exit.py <rank> <port>``: one of two gloo ranks that do what a DDP run's last steps do
(reductions, the test predictions' all_gather), close the group with ``close_process_group`` as
train.py does, and exit. Left open, the group aborts some exits ("terminate called without an active
exception", exit 134)."""

import os
import sys

import torch
import torch.distributed as dist

from r2n2.distributed import close_process_group

rank, port = int(sys.argv[1]), sys.argv[2]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
dist.init_process_group("gloo", rank=rank, world_size=2)
total = torch.tensor(float(rank))
dist.all_reduce(total)
rows = torch.full((256, 32**3), rank, dtype=torch.uint8)  # PredictionSpread's kept predictions
gathered = [torch.empty_like(rows) for _ in range(2)]
dist.all_gather(gathered, rows)
assert total.item() == 1 and [int(g[0, 0]) for g in gathered] == [0, 1]
close_process_group()
assert not dist.is_initialized()
