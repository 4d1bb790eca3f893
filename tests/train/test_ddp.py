"""Data-parallel training: two CPU processes (torchrun, gloo) follow the loss trajectory of one process.

Both runs see the same global batch at every step (2 processes x 2 examples vs 1 process x 4 examples, the
same seeded order), with dropout off, so the logged training losses must agree to float tolerance. The runs are
subprocesses: pytest-socket only blocks sockets inside this process, and gloo needs localhost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

RUN = """
import sys
from gloss.train.config import TrainConfig
from gloss.train.loop import train
data_dir, out_dir, base, batch = sys.argv[1:5]
train(TrainConfig(data_dir=data_dir, out_dir=out_dir, base_model=base, quant="none", max_steps=3,
                  per_device_batch_size=int(batch), grad_accum=1, warmup_steps=0, max_seq_length=256,
                  logging_steps=1, eval_max_users=2, lora_dropout=0.0, learning_rate=1e-2))
"""
LOSS_RTOL = 1e-4  # fp32 on CPU; gloo all-reduce only reorders the gradient sums


def _losses(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.slow
def test_two_process_loss_trajectory_matches_one_process(prepared_dir, tiny_llama_dir, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [str(prepared_dir), None, str(tiny_llama_dir)]
    single = [sys.executable, str(script), args[0], str(tmp_path / "one"), args[2], "4"]
    double = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              str(script), args[0], str(tmp_path / "two"), args[2], "2"]
    for command in (single, double):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 3
    assert one[0] != one[-1]  # the weights moved, so later steps test the synchronised update
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    manifest = json.loads((tmp_path / "two" / "gloss_manifest.json").read_text())
    assert manifest["result"]["world_size"] == 2
