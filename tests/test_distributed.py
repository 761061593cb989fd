"""DP-LoRA in 2 processes (gloo, the tiny random Llama): the guarantee is the single-process one.

Two processes are spawned once for the module; each runs the scenarios below and saves what it saw,
and the tests check the properties: the same (epsilon, sigma, q, steps) as one process; the update is
(sum of every process's clipped per-record gradients + one noise draw) / B, whose noise has std
sigma*C/B (not sqrt(2) times it); every process holds identical LoRA weights after every step; the
adapter loads with plain peft; a world size the batch cannot be split over stops before training.
"""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, run_all, run_all_in_process
from training_helpers import TEXTS, dp_config, record_gradient, small_config

from ppt_core.data import batching
from ppt_core.dp import distributed, training
from ppt_core.run import errors

WORLD_SIZE = 2
SIGMA, CLIP = 0.7, 0.5


def _lora_vector(lora_params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in lora_params])


def _prepared(tiny, config, world):
    model, tokenizer = tiny
    torch.manual_seed(config.seed)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    return training.prepare(peft_model, batching.record_dataset(tokenizer, TEXTS, config.max_length), config, world)


def _scenarios(rank: int, out_dir: str) -> None:
    """What one of the 2 processes does; it saves its observations to out_dir/rank<r>.pt."""
    from ppt_core.models import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    world = distributed.current_world()
    tiny = load_model("tiny-random-llama", device="cpu")
    seen = {"world": world}

    # A batch too small to split over the processes: stopped before any LoRA model is built.
    built = []
    original = training.lora_model
    training.lora_model = lambda *a, **k: built.append(1) or original(*a, **k)
    try:
        training.finetune(*tiny, TEXTS, small_config(expected_batch_size=1, dp=dp_config()))
    except errors.TrainingConfigError as err:
        seen["bad_batch_error"] = str(err)
    training.lora_model = original
    seen["bad_batch_built_model"] = bool(built)

    # A whole DP run: its guarantee, its merged log, and the adapter (rank 0 saves it).
    peft_model, result = training.finetune(*tiny, TEXTS, small_config(dp=dp_config()), heldout_texts=TEXTS[:4])
    seen["result"] = result
    seen["final_lora"] = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    if world.main:
        peft_model.save_pretrained(f"{out_dir}/adapter")

    # The non-private twin in 2 processes trains too, to identical replicas.
    nodp_model, nodp = training.finetune(*tiny, TEXTS, small_config(epochs=2.0))
    seen["nodp_result"] = nodp
    seen["nodp_lora"] = _lora_vector([p for p in nodp_model.parameters() if p.requires_grad])

    # Noise only (no record in either process's batch): the gradient the optimizer applies.
    sgd = dict(optimizer="sgd", learning_rate=1.0, lr_schedule="constant")
    noisy = _prepared(tiny, small_config(**sgd, dp=dp_config(max_grad_norm=CLIP)), world)
    noisy.optimizer.noise_multiplier = SIGMA
    training._empty_batch_gradients(noisy.lora_params, noisy.config.dp)
    noisy.optimizer.step()
    seen["noise_grad"] = torch.cat([p.grad.reshape(-1) for p in noisy.lora_params]).clone()
    seen["noise_expected_batch"] = noisy.plan.expected_batch_size

    # sigma = 0, one step: the update is lr * (sum of every process's clipped record gradients) / B.
    clipped = _prepared(tiny, small_config(**{**sgd, "learning_rate": 0.5, "expected_batch_size": 10},
                                           dp=dp_config(max_grad_norm=1e-2)), world)
    clipped.optimizer.noise_multiplier = 0.0
    before = _lora_vector(clipped.lora_params)
    log = training.run_steps(clipped, steps=1)  # the log of every process's local batches
    seen["clipped_before"], seen["clipped_update"] = before, _lora_vector(clipped.lora_params) - before
    seen["clipped_members"] = [i for i, count in enumerate(log.sample_counts) if count]
    seen["clipped_expected_batch"] = clipped.plan.expected_batch_size
    ghost = _prepared(tiny, small_config(**{**sgd, "learning_rate": 0.5, "expected_batch_size": 10},
                                         dp=dp_config(max_grad_norm=1e-2, grad_sample_mode="ghost")), world)
    ghost.optimizer.noise_multiplier = 0.0
    training.run_steps(ghost, steps=1)  # the same seed draws the same records
    seen["ghost_update"] = _lora_vector(ghost.lora_params) - before

    # Step by step, with noise: every process holds the same LoRA weights after each logical step.
    stepping = _prepared(tiny, small_config(epochs=1.0, dp=dp_config()), world)
    per_step = []
    for _ in range(stepping.steps):
        training.run_steps(stepping, steps=1)
        mine = _lora_vector(stepping.lora_params)
        everyone = [torch.empty_like(mine) for _ in range(WORLD_SIZE)]
        dist.all_gather(everyone, mine)
        per_step.append((all(torch.equal(everyone[0], other) for other in everyone), mine))
    seen["per_step"] = per_step

    torch.save(seen, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """What each of 2 gloo processes saw: [rank 0's, rank 1's]."""
    out_dir = tmp_path_factory.mktemp("distributed")
    mp.spawn(_scenarios, args=(str(out_dir),), nprocs=WORLD_SIZE, join=True)
    return out_dir, [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process(tiny):
    torch.set_num_threads(1)
    return training.finetune(*tiny, TEXTS, small_config(dp=dp_config()), heldout_texts=TEXTS[:4])


def test_guarantee_is_the_single_process_one(two_processes, single_process):
    """Same epsilon, sigma, q and steps as one process; the accountant charged exactly them in each process."""
    _, ranks = two_processes
    _, alone = single_process
    for seen in ranks:
        result = seen["result"]
        assert (result.epsilon, result.noise_multiplier, result.sample_rate, result.steps) == \
               (alone.epsilon, alone.noise_multiplier, alone.sample_rate, alone.steps)
        assert result.epsilon <= 8.0
    # The merged log covers every record of both shards: Poisson batches of the whole dataset.
    merged = ranks[0]["result"]
    assert merged.batch_sizes == ranks[1]["result"].batch_sizes and len(merged.batch_sizes) == merged.steps
    assert sum(merged.sample_counts) == sum(merged.batch_sizes) > 0
    assert len(merged.sample_counts) == len(TEXTS)
    assert merged.heldout_losses and not ranks[1]["result"].heldout_losses  # rank 0 measures, the others wait


def test_noise_is_added_once_per_step(two_processes):
    """With no record in any batch, the applied gradient is N(0, (sigma*C)^2) / B per coordinate: one
    noise draw for the logical step, not one per process (which would give sqrt(2) times the std)."""
    _, ranks = two_processes
    grads = [seen["noise_grad"] for seen in ranks]
    assert torch.equal(grads[0], grads[1])  # both processes apply the same reduced gradient
    noise = grads[0] * ranks[0]["noise_expected_batch"]
    n = noise.numel()
    assert n > 5000
    ratio = float(noise.std()) / (SIGMA * CLIP)
    assert abs(ratio - 1) < 6 / np.sqrt(2 * n), ratio  # sqrt(2) (noise in both) or 1/sqrt(2) would fail
    assert abs(float(noise.mean())) < 6 * SIGMA * CLIP / np.sqrt(n)


def test_clipped_gradients_are_summed_across_processes(two_processes, tiny):
    """sigma = 0: the update equals lr * sum over the records drawn in either process of clip(g_i) / B,
    from per-record backward passes in this (single) process."""
    _, ranks = two_processes
    seen = ranks[0]
    assert torch.equal(seen["clipped_update"], ranks[1]["clipped_update"])
    members = seen["clipped_members"]
    assert members == ranks[1]["clipped_members"] and len(members) > 2
    model, tokenizer = tiny
    config = small_config(optimizer="sgd", learning_rate=0.5, lr_schedule="constant", expected_batch_size=10)
    torch.manual_seed(config.seed)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    lora = [p for p in peft_model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, value in zip(lora, torch.split(seen["clipped_before"], [p.numel() for p in lora])):
            p.copy_(value.view_as(p))
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    clip = 1e-2
    clipped = [g * min(1.0, clip / (float(g.norm()) + 1e-6)) for g in
               (record_gradient(peft_model, dataset, i) for i in members)]
    expected = -0.5 * torch.stack(clipped).sum(0) / seen["clipped_expected_batch"]
    assert torch.allclose(seen["clipped_update"], expected, rtol=1e-3, atol=1e-9)
    # Half the records' gradients (one process's share) would not do.
    assert float((seen["clipped_update"] - expected).norm()) < 0.01 * float(expected.norm())
    # Ghost clipping (Opacus's DistributedDPOptimizerFastGradientClipping) computes the same clipped sum.
    assert torch.allclose(seen["ghost_update"], expected, rtol=1e-3, atol=1e-8)


def test_replicas_identical_after_every_step(two_processes):
    _, ranks = two_processes
    per_step = ranks[0]["per_step"]
    assert len(per_step) >= 4
    assert all(same for same, _ in per_step)
    assert all(not torch.equal(a, b) for (_, a), (_, b) in zip(per_step, per_step[1:]))  # every step moved them
    assert all(torch.equal(ranks[0]["final_lora"][k], ranks[1]["final_lora"][k]) for k in ranks[0]["final_lora"])
    assert torch.equal(ranks[0]["nodp_lora"], ranks[1]["nodp_lora"])
    nodp = ranks[0]["nodp_result"]
    assert nodp.epsilon is None and sum(nodp.sample_counts) == sum(nodp.batch_sizes)


def test_adapter_loads_with_plain_peft(two_processes, tiny):
    """Rank 0's saved adapter loads with PeftModel.from_pretrained onto the base model, holds the trained
    weights, and changes the model's output (the opacus#820 trap would leave it equal to the base)."""
    import copy

    from peft import PeftModel

    out_dir, ranks = two_processes
    model, tokenizer = tiny
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), str(out_dir / "adapter"))
    weights = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    trained = ranks[0]["final_lora"]
    assert len(weights) == len(trained)
    for name, value in trained.items():
        assert torch.equal(weights[name], value), name
    ids = tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(loaded(**ids).logits, model(**ids).logits)


def test_batch_too_small_to_split_stops_before_training(two_processes):
    _, ranks = two_processes
    for seen in ranks:
        assert "expected_batch_size (1) is too small to split over 2 processes" in seen["bad_batch_error"]
        assert "use expected_batch_size >= 2" in seen["bad_batch_error"]
        assert not seen["bad_batch_built_model"]


@pytest.mark.parametrize("world_size, n_records, batch, message", [
    (0, 30, 6, "nproc) must be an integer >= 1 (got 0)"),
    (2.0, 30, 6, "must be an integer >= 1 (got 2.0)"),
    (40, 30, 30, "40 processes for 30 training records"),
    (4, 30, 3, "expected_batch_size (3) is too small to split over 4 processes"),
])
def test_bad_world_size_names_the_value_and_the_fix(world_size, n_records, batch, message):
    with pytest.raises(errors.TrainingConfigError) as err:
        distributed.check_world(world_size, n_records, batch)
    assert message in str(err.value)
    distributed.check_world(2, 30, 6)  # a good one passes


def test_single_process_has_no_world():
    """Without torchrun nothing changes: no process group, so finetune takes the single-process path."""
    assert distributed.current_world() is None


# --- the study driver ----------------------------------------------------------------------------


@pytest.mark.parametrize("nproc, fragment", [
    ("0", "nproc) must be an integer >= 1 (got 0)"),
    ("9", "expected_batch_size (8) is too small to split over 9 processes"),
])
def test_run_all_refuses_a_bad_nproc_before_running(run_name, nproc, fragment):
    result = run_all_in_process("--profile", "smoke", "--nproc", nproc, "--run-name", run_name)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert not (REPO / "runs" / run_name).exists()


@pytest.mark.slow
def test_smoke_pipeline_in_2_processes_gives_the_single_process_epsilon(smoke_run, run_name):
    """run_all --nproc 2 runs every notebook, notebook 03 training each arm with torchrun in 2 processes;
    each arm's (epsilon, sigma, q, steps) equals the session's one-process smoke run's, and its adapter is saved."""
    result = run_all("--profile", "smoke", "--nproc", "2", "--run-name", run_name, "--force")
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads(smoke_run.paths.results.read_text())["training"]
    two = json.loads((REPO / "runs" / run_name / "results.json").read_text())["training"]
    assert sorted(one) == sorted(two) and len(one) == 4
    for arm in one:
        for key in ("private", "epsilon", "noise_multiplier", "sample_rate", "steps", "expected_batch_size"):
            assert one[arm][key] == two[arm][key], (arm, key)
        assert (REPO / "runs" / run_name / "models" / arm / "adapter" / "adapter_config.json").exists()
    assert any(record["epsilon"] for record in one.values())
