"""``python gloo_exit.py <rank> <port>``: one of two gloo ranks that run two jobs in one process, as a
multirun does, each ending as train.py ends a run: the collectives of a run's end (reductions, the
test predictions' all_gather), then ``close_process_group`` (job 1 with ``wait_for_all``: rank 0 is
still busy there, as with its baselines, while rank 1 would start job 2's group on the same port),
then the process exits. Left open, a gloo group aborts some exits ("terminate called without an
active exception", exit 134)."""

import os
import sys
import time

import torch
import torch.distributed as dist

from r2n2.train.distributed import close_process_group

rank, port = int(sys.argv[1]), sys.argv[2]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
for job in (1, 2):
    dist.init_process_group("gloo", rank=rank, world_size=2)
    total = torch.tensor(float(rank + 10 * job))
    dist.all_reduce(total)
    rows = torch.full((256, 32**3), rank + job, dtype=torch.uint8)  # PredictionSpread's kept predictions
    gathered = [torch.empty_like(rows) for _ in range(2)]
    dist.all_gather(gathered, rows)
    assert total.item() == 1 + 20 * job and [int(g[0, 0]) for g in gathered] == [job, job + 1], (job, total)
    if rank == 0 and job == 1:
        time.sleep(1.0)  # rank 0's own work after the test (baselines, metrics.json)
    close_process_group(wait_for_all=job == 1)
    assert not dist.is_initialized()
