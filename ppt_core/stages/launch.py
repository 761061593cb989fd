"""Train a run's arms: in this process, or each in N processes under torchrun; and the torchrun entry point.

`train_arms` is what notebook 03 calls: with nproc 1 each arm trains in the calling process
(`arm_training.train_arm`); with nproc > 1 `launch` starts torchrun on this module for each arm and
reads its result back. From the command line:

    torchrun --standalone --nproc_per_node 4 -m ppt_core.stages.launch --run-name quick --arm pruned-dp8  # 4 GPUs
    torchrun --nproc_per_node 2 -m ppt_core.stages.launch --run-name smoke --arm full-dp8  # 2 CPU processes (gloo)
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 -m ppt_core.stages.launch --run-name full --arm pruned-dp3  # 2 nodes x 8 GPUs
    python -m ppt_core.stages.launch --run-name smoke --arm full-nodp  # one process

The run's data must exist (notebook 00), and for a pruned arm its pruned model (notebook 02). The
run's parameters come from runs/<run>/params.json, which `launch` writes (notebook 03 with nproc > 1,
`run_all.py --nproc N`); without it, from the profile named by --profile. Rank 0 writes the arm's
artifacts (`arm_training.save_arm`, atomically) with its train_result.json, which `launch` reads back.
Every process must see the same runs/ folder (a shared file system across nodes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ppt_core import data
from ppt_core.dp import distributed, train_config, training
from ppt_core.run import arms, artifacts, profiles
from ppt_core.stages import arm_training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # --run-name, as in run_all.py (torchrun would take a bare --run for its own --run-path)
    parser.add_argument("--run-name", required=True, help="the run folder under runs/ (e.g. quick, smoke)")
    parser.add_argument("--arm", required=True,
                        help="a fine-tuned arm: full-nodp, pruned-nodp, full-dp<ε>, pruned-dp<ε>")
    parser.add_argument("--profile",
                        help="the profile, when runs/<run>/params.json does not exist (default: --run-name)")
    return parser.parse_args(argv)


def run_params(run: str, profile: str | None = None) -> dict:
    """The parameters of run `run`: its params.json, else the profile `profile` (default: `run`) under that run name."""
    path = artifacts.RunPaths.for_profile(run).root / "params.json"
    if path.exists():
        return artifacts.read_json(path)
    return profiles.get_profile(profile or run, run_name=run)


def _checked(args):
    """(params, arm, train texts, held-out texts, audit canaries), or one clear error before any model is loaded."""
    params = run_params(args.run_name, args.profile)
    arm = arms.parse(args.arm)
    if not arm.trained:
        raise ValueError(f"--arm {args.arm!r} is not a fine-tuned arm: use full-nodp, pruned-nodp, full-dp<ε> "
                         "or pruned-dp<ε>")
    paths = artifacts.run_paths(params)
    if not (paths.data / "train.jsonl").exists():
        raise FileNotFoundError(f"{paths.data / 'train.jsonl'} does not exist: build the run's data first "
                                f"(python run_all.py --run-name {args.run_name} --only 00)")
    splits = data.load_splits(paths.data)
    texts, heldout = splits.texts("train"), splits.texts("heldout", kind="note")
    distributed.check_world(int(os.environ.get("WORLD_SIZE", "1")), len(texts), int(params["expected_batch_size"]))
    train_config.check_config(train_config.config_from_params(params, arm.epsilon), len(texts))
    return params, arm.name, texts, heldout, splits.audit


def main(argv=None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        params, arm, texts, heldout, audit_records = _checked(args)
    except (ValueError, OSError) as err:
        if rank == 0:  # one message, not one per process
            print(f"error: {err}", file=sys.stderr)
        return 2
    if "RANK" not in os.environ:
        arm_training.train_arm(params, arm, texts, heldout, audit_records)  # saves the arm and its train_result.json
        return 0
    with distributed.process_group(params.get("device")) as world:
        arm_training.train_arm(params, arm, texts, heldout, audit_records, progress=world.main)
    return 0


def train_arms(params: dict, arm_names, texts, heldout_texts, audit_records=()) -> dict[str, training.TrainResult]:
    """{arm: TrainResult} for each of `arm_names`, trained on `texts` (the train split, in order) with its
    loss curve on `heldout_texts` and the audit over training on `audit_records` (the audit split): in this
    process when params["nproc"] is 1, else in nproc processes (which read the run's own splits). An arm whose
    folder holds a finished training with these very inputs is read back instead (`arm_training.finished_arm`),
    saying so: after one change, only the arms it reaches train again."""
    results, families = {}, {}  # the arms of one starting model share what they compute alike
    for arm in arm_names:
        finished = arm_training.finished_arm(params, arm, texts, heldout_texts, audit_records)
        if finished is not None:
            print(f"{arm}: read back from {artifacts.run_paths(params).model(arm)} (trained before on these very "
                  "inputs; delete that folder to train it again)", flush=True)
            results[arm] = finished
        elif int(params["nproc"]) == 1:
            results[arm] = arm_training.train_arm(params, arm, texts, heldout_texts, audit_records,
                                                  family=families.setdefault(arms.parse(arm).start, {}))
        else:
            results[arm] = launch(params, arm)
    return results


def launch(params: dict, arm: str, *, nproc: int | None = None) -> training.TrainResult:
    """Train `arm` in `nproc` processes (default: params["nproc"]) on this machine with torchrun, and read
    its result back. The run's data (and, for a pruned arm, its pruned model) must exist."""
    nproc = int(params["nproc"] if nproc is None else nproc)
    paths = artifacts.run_paths(params)
    n_records = len(data.load_splits(paths.data).texts("train"))
    distributed.check_world(nproc, n_records, int(params["expected_batch_size"]))
    artifacts.write_json(paths.root / "params.json", params)
    run = params.get("run_name") or params["profile"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ppt_core.stages.launch", "--run-name", run, "--arm", arm]
    path = os.pathsep.join(filter(None, [str(artifacts.REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    finished = subprocess.run(command, cwd=artifacts.REPO_ROOT, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"training {arm} in {nproc} processes failed (exit {finished.returncode}):\n"
                           + finished.stderr[-4000:])
    return arm_training.read_result(params, arm)


if __name__ == "__main__":
    sys.exit(main())
