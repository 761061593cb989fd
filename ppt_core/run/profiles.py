"""Named study profiles: the one source of every study parameter.

A profile is a flat dict of plain values, so papermill can pass it into a notebook's
`parameters` cell unchanged. `quick` is the default: SmolLM2-135M on a 2-core CPU.
`smoke` runs the whole pipeline in seconds on a tiny random model (tests, CI).
`paper` is the quick profile over the epsilon sweep and three seeds (at most 100 minutes on a 2-core CPU);
committed under figures/paper/.
`full` is the paper-scale run (more data and steps, an epsilon sweep, several seeds; a GPU helps).

`seeds` lists the seeds of a run: one seed runs the study once in runs/<run>/ (with `seed`), several
run it once per seed in runs/<run>/seed-<s>/ and notebook 07 pools them (see ppt_core.run.artifacts).
"""

from __future__ import annotations

import copy

DEFAULT_PROFILE = "quick"

_QUICK = dict(
    profile="quick",
    run_name=None,  # folder under runs/ (None: the profile's name)
    figures_dir=None,  # None: runs/<run_name>/figures (run_all.py sets figures/ when it regenerates the quick run)
    model="smollm2-135m",
    device="auto",  # "auto" picks CUDA when available, else CPU
    nproc=1,  # processes notebook 03 trains each arm in (torchrun, ppt_core.stages.launch): one per GPU, or CPU
    #           processes
    seed=0,
    # --- data (00) -------------------------------------------------------------------------
    data_path=None,  # None: the synthetic clinical-notes corpus; else a .jsonl/.csv/.txt file
    text_field="text",  # JSONL key or CSV column holding the text of a user record
    # The memorisation regime: a study of what DP mitigates needs non-private twins that leak, measurably. Few
    # short records seen several times, by an adapter with the capacity to memorise: notes cut to max_length
    # tokens, canaries up to 32 copies, 256 single-copy audit canaries, 6 expected passes (each included record
    # drawn about 6 times), LoRA rank 16 on every linear projection of the last 10 blocks (value, output and MLP
    # matter most for memorisation: Savine 2025, arXiv 2507.21009), a constant learning rate. One pass at a small
    # rank on q/v alone memorises nothing an attack sees. Every token pays: 50 notes and 2 canaries per repetition
    # count keep a pass short, and the audit canaries a larger share of what the model sees, so the twins leak
    # more, not less (figures/results.md shows their audit bounds beside the DP arms').
    n_train=50,  # training notes; the membership attack takes n_membership of them
    n_heldout=100,  # never trained on: the attacks' non-members and the held-out perplexity
    n_public=100,
    canary_repetitions=[1, 8, 32],  # copies of each inserted canary in train
    # Canaries per repetition count: a point each in the exposure figure. Two at 32x give the canary test a
    # floor of p = 1/231 against 20 references (Mann-Whitney); the verdicts decide on the audit canaries.
    canaries_per_repetition=2,
    n_reference_canaries=20,  # same form, never inserted: the null of the canary test (20 give a level of 1/21)
    n_audit_canaries=256,  # one-run audit: each included in train with probability 1/2 (its own random stream)
    audit_canary_tokens=10,  # random single-token words per audit canary, the tokens its score reads
    secret_digits=6,  # canary secrets are drawn uniformly from 10**secret_digits codes
    max_length=48,  # tokens per record, everywhere (training, scoring, similarity): a note's opening, with its PII
    # --- layer similarity and pruning (01, 02) -----------------------------------------------
    n_calibration=64,  # public records used to measure layer similarity
    similarity_pooling="mean",  # "mean" over real tokens, or "last" token
    prune_strategy="pairwise",
    n_remove=4,  # blocks the pruned family loses; notebook 02's sweep shows what removing more costs
    prune_strategies=["pairwise", "block", "iterative", "last", "random"],
    prune_sweep=[0, 4, 8, 12],  # blocks removed in the perplexity/speed sweep
    n_calibration_iterative=8,  # public records for each re-measurement of S by the iterative strategy
    # Held-out records for perplexity (02 scores 5 strategies x 4 levels): 32 give intervals of about +-6% on the
    # ratios the verdicts read (64 about +-3%), enough to decide them.
    n_eval=32,
    eval_batch_size=16,
    timing_prompt_tokens=32,  # inference timing: prompt length, generated tokens, timed runs per setting
    timing_new_tokens=8,
    timing_repeats=3,
    # Paired prefill rounds the speed verdict reads (04, batch timing.SPEED_BATCH_SIZE), base and pruned
    # interleaved: 3 rounds gave 1.21 [0.756, 1.94]x, undecided; 30 short ones decide a ~15% FLOP cut on a
    # quiet machine (the interval's width is in the verdict's evidence).
    timing_rounds=30,
    # --- DP-LoRA fine-tuning (03) ------------------------------------------------------------
    train_arms=["full", "pruned"],
    epsilons=[8],  # one DP arm per target epsilon; non-private arms are always trained too
    # Dose arms: DP arms of the first family at targets far above any claim, between the claimed arms and the
    # non-private twin, so that each instrument's reading can climb from the DP arms' zero to the twin's leak and
    # show where memorisation becomes visible to it. At this schedule σ = 0.74 gives ε = 8, σ = 0.24 ε = 128 and
    # σ = 0.023 ε = 100,000 (rdp: prv's grid does not reach it); the twin has no noise at all.
    # An instrument, not a claim: the paper's claims are decided on `epsilons`, the dose arms shown beside them.
    dose_epsilons=[100_000],
    delta=1e-5,  # must be < 1/N_train
    max_grad_norm=1.0,
    accountant="prv",
    grad_sample_mode="hooks",
    expected_batch_size=16,  # records per optimizer step in expectation (Poisson sampling)
    physical_batch_size=16,  # records per forward/backward; larger logical batches are split
    epochs=6.0,  # expected passes over train (a float): steps = floor(epochs * ceil(N / expected_batch_size))
    train_max_length=None,  # tokens per record while training (None: max_length); scoring reads the same length
    # Learning rates chosen by `make tune` (ppt_core/study/lr_tuning.py) on an independent draw of the data, never the
    # study's records, at these sizes with LoRA on the last 10 blocks; the held-out loss of every candidate is in
    # figures/tuning/quick.json. A DP arm takes the rate tuned at the largest ε at or below its own.
    dp_learning_rates={1: 5e-3, 8: 1e-2},  # ε: the DP rate tuned there
    nodp_learning_rate=1e-3,  # the non-private arms'
    lora_rank=16,  # the capacity to memorise (see the regime above)
    lora_alpha=16,
    lora_dropout=0.0,
    lora_targets="attention+mlp",  # "query+value", "attention", "attention+mlp", or a list of module names
    # LoRA on the last 10 blocks only (None: every block). The 20 frozen blocks below are computed once per
    # record instead of in every pass (ppt_core.dp.frozen_prefix), and the backward pass stops at block 20: about
    # half of training's work. It memorises more, not less (a larger audit AUC and bound for the twins); what it
    # costs is healing: the DP arms reach a higher held-out perplexity than with LoRA on every block.
    lora_blocks=10,
    bf16="auto",  # bf16 autocast for the forward/backward where the device has native bf16 (else float32,
    # which is faster than emulated bf16); per-sample clipping and noise stay float32 either way
    optimizer="adamw",  # "adamw", or "sgd" (an update is exactly lr * the noised mean gradient)
    weight_decay=0.0,  # the optimizer's (decoupled for adamw)
    lr_schedule="constant",  # "constant", "linear" or "cosine" decay of the learning rate over the steps
    warmup_fraction=0.0,  # share of the steps whose learning rate ramps up linearly before the decay
    secure_mode=False,  # False: Poisson draws and DP noise come from the seed (reproducible study, not a
    #                     release); True: Opacus's cryptographic generator (needs torchcsprng), for a release
    # The implementation audit of every DP arm (ppt_core.leakage.implementation_audit): white-box gradient canaries in
    # its own DP optimizer, m of them, and the planted-bug controls claiming ε = 8 at its schedule (0: off). A canary
    # costs no forward pass, only a coordinate: the bound grows slowly with m (the ceiling of 100,000 is twice
    # ε = 8), and its cost per step linearly (timings.json's implementation_audit_seconds_per_step).
    implementation_audit_canaries=100_000,
    # Held-out loss read this many times during training (and once before), on loss_curve_records held-out notes:
    # the only loss curve a DP arm publishes. (The audit over training reads all 256 audit canaries after every
    # expected pass whatever this is: arm_training.audit_probe.)
    loss_curve_points=3,
    loss_curve_records=8,  # held-out notes each held-out-loss measurement averages over
    # --- synthetic data (05) -----------------------------------------------------------------
    n_synthetic=8,
    synthetic_max_new_tokens=32,
    synthetic_prompt_tokens=8,  # user data only: prompts are the first tokens of held-out records (never train)
    temperature=0.8,
    top_p=0.95,
    generation_batch_size=16,
    n_synthetic_references=16,  # train and held-out notes each, for "nearest record" BERTScore
    # --- attacks (06) ------------------------------------------------------------------------
    n_attack=8,  # members and as many held-out records for prefix extraction (the first of n_membership)
    attack_prefix_tokens=16,
    attack_suffix_tokens=16,
    # Members (every training note) and as many non-members: AUC intervals of about +-0.11 (+-0.08 with 100),
    # enough to tell the twins' calibrated membership gain from the DP arms'. "DP mitigates" decides on the audit
    # canaries; the membership difference is shown beside it.
    n_membership=50,
    min_k_percent=20,
    canary_rank_cap=20,  # exact rank up to this (exposure above 15.6 of 19.9 bits; past it an interval): descriptive,
    #                     the verdicts test each canary's secret gain against the reference canaries instead
    n_secret_samples=64,  # only for tokenizers that merge digits: uniform codes that bound the rank instead
    secret_batch_size=16,  # digit-tree branches (or sampled codes) scored per forward pass
    bf16_scoring="auto",  # bf16 autocast for scoring where the CPU or GPU has native bf16 ("auto"), or True/False
    # --- uncertainty (07) --------------------------------------------------------------------
    n_bootstrap=1000,
    seeds=[0],  # one seed: the study runs once with `seed`; several: once per seed, pooled by notebook 07
)

_SMOKE = dict(
    _QUICK,
    profile="smoke",
    model="tiny-random-llama",
    n_train=48,
    n_heldout=24,
    n_public=24,
    canary_repetitions=[1, 4],
    canaries_per_repetition=2,
    n_reference_canaries=20,
    n_audit_canaries=32,
    implementation_audit_canaries=10_000,
    max_length=64,
    n_calibration=8,
    n_remove=2,
    prune_sweep=[0, 1, 2, 3],
    n_calibration_iterative=4,
    n_eval=12,
    eval_batch_size=8,
    timing_prompt_tokens=16,
    timing_new_tokens=4,
    timing_repeats=1,
    timing_rounds=3,
    expected_batch_size=8,
    physical_batch_size=4,
    epochs=2,
    lora_rank=4,
    lora_blocks=3,  # of the tiny model's 6 (4 when pruned): the frozen-block cache runs in every smoke run
    delta=1e-3,
    n_synthetic=4,
    synthetic_max_new_tokens=16,
    n_attack=4,
    attack_prefix_tokens=8,
    attack_suffix_tokens=8,
    n_membership=16,
    canary_rank_cap=20,
    n_secret_samples=16,
    n_bootstrap=50,
    bf16=False,
    bf16_scoring=False,
    loss_curve_points=6,
    loss_curve_records=8,
    n_synthetic_references=32,
    dose_epsilons=[],  # the dose path is tested on its own (tests/test_arms.py, test_training.py, test_verdicts.py)
)

_FULL = dict(
    _QUICK,
    profile="full",
    n_train=4000,
    n_heldout=1000,
    n_public=1000,
    canary_repetitions=[1, 2, 4, 8, 16, 32],
    canaries_per_repetition=10,
    n_reference_canaries=20,
    n_audit_canaries=2000,
    n_calibration=256,
    prune_sweep=[0, 2, 4, 6, 8, 10, 12, 15],
    n_calibration_iterative=64,
    n_eval=500,
    timing_prompt_tokens=128,
    timing_new_tokens=32,
    timing_repeats=5,
    epsilons=[1, 3, 8],
    delta=1e-6,
    expected_batch_size=128,
    physical_batch_size=16,
    epochs=5,
    n_synthetic=200,
    synthetic_max_new_tokens=128,
    n_synthetic_references=200,
    loss_curve_points=6,
    loss_curve_records=16,
    n_attack=200,
    attack_prefix_tokens=24,
    attack_suffix_tokens=24,
    n_membership=1000,
    canary_rank_cap=10000,
    n_secret_samples=5000,
    seeds=[0, 1, 2],
)

# The paper profile: the quick profile, record for record, over the epsilon sweep and three seeds: 10 fine-tuned
# arms a seed and 36 attacked in all, sized for a 2-core CPU in about two hours. Pruning's strategy sweep
# runs at the studied level only. Its committed run: README, under Results.
_PAPER = dict(
    _QUICK,
    profile="paper",
    epsilons=[1, 3, 8],  # with the non-private arms of both families: 8 fine-tuned arms per seed, and the doses
    dose_epsilons=[10_000, 100_000],  # two dose arms a seed (10 fine-tuned arms): the privacy panel's climb
    seeds=[0, 1, 2],
    prune_strategies=["pairwise", "block", "last", "random"],  # iterative chose pairwise's blocks in quick
    prune_sweep=[0, 4],
    # One rate per family, chosen by `make tune PROFILE=paper` on an independent draw of the data, never the study's
    # records; the held-out loss of every candidate is in figures/tuning/paper.json.
    dp_learning_rates={1: 5e-3},  # every DP arm of the paper profile takes the rate tuned at ε = 1
    nodp_learning_rate=1e-3,
)

PROFILES = {"smoke": _SMOKE, "quick": _QUICK, "paper": _PAPER, "full": _FULL}


def from_notebook(namespace: dict) -> dict:
    """A notebook's parameters as one dict: its `profile`, overridden by every profile key it defines.

    A notebook's `parameters` cell declares the values it uses; papermill replaces them per run.
    """
    profile = namespace.get("profile", DEFAULT_PROFILE)
    known = PROFILES[profile] if profile in PROFILES else PROFILES[DEFAULT_PROFILE]
    return get_profile(profile, **{k: namespace[k] for k in known if k in namespace and k != "profile"})


def get_profile(name: str = DEFAULT_PROFILE, **overrides) -> dict:
    """Return a copy of the named profile with `overrides` applied (unknown keys are refused)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    params = copy.deepcopy(PROFILES[name])
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"unknown profile parameter(s) {unknown}: known are {sorted(params)}")
    params.update(overrides)
    return params


def check_seeds(seeds) -> None:
    """`seeds` must be a non-empty list of distinct integers >= 0 (each names a run folder, seed-<s>)."""
    if (not isinstance(seeds, (list, tuple)) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2] (got {seeds!r})")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (got {list(seeds)}): each seed is one run of the study")
