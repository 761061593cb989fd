"""Can this decoder be pruned and fine-tuned here? Decided by doing it, on a tiny random model of its own config.

transformers ships well over a hundred decoder-only causal language models, and more with each release. Instead
of a list of tested model types, `check` builds a tiny random instance of the user's own config (`tiny_config`:
a few blocks that cover every per-layer setting, small widths, the same model type and settings) and runs on it,
in seconds, each operation the study relies on, in this order:

1. blocks      one list of decoder blocks, all of one structure, none sharing a weight with another
               (a stack that reuses one layer across depth cannot lose one of its uses);
2. residual    the residual stream at every block boundary has one shape (B, T, D): what similarity compares;
3. removal     the pruned model computes what the full model computes with the removed block skipped (a block
               that reads its own index, renumbered by removal, would not);
4. reload      the pruned model saves and reloads with plain from_pretrained: no missing, unexpected or
               mismatched weight, the same per-layer config, the same logits;
5. kv-cache    greedy decoding with the KV cache gives, at every step, the logits of the uncached forward;
6. lora        the LoRA targets exist (found by role, `architectures.lora_roles`, or given as a list);
7. per-record  Opacus's per-record gradients of the adapters equal each record's gradient computed alone, with
               padding: DP-SGD clips what it takes for one record's gradient, and a block that mixes records
               (an adapter on a layer that sees the batch's tokens flattened together) would void the guarantee;
8. dp-step     one DP-SGD step through the study's own loop (`training.prepare`, the frozen-block cache where
               it applies) changes the adapters and nothing else (the opacus#820 trap).

A model that fails is refused with the step and why; one that passes runs. The verdict is kept under the model
cache (`artifacts.cache_dir()`) per config, target set, library versions and source of the code it ran
(`CHECKED_CODE`), so the check costs its seconds once.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ppt_core.models import architectures
from ppt_core.run import artifacts
from ppt_core.run.errors import ArchitectureError, TrainingConfigError

STEPS = ("build", "blocks", "residual", "removal", "reload", "kv-cache", "lora", "per-record", "dp-step")

# The tiny instance: these settings, where the config has them, take these values (widths) or at most these
# (counts). Everything else (model type, per-layer lists, norms, activations, rope kind) stays the user's.
TINY_WIDTHS = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, head_dim=16, vocab_size=256,
                   moe_intermediate_size=32, shared_expert_intermediate_size=64, expert_intermediate_size=32,
                   q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                   rotary_dim=8, sliding_window=4, attention_chunk_size=4)
TINY_AT_MOST = dict(num_local_experts=4, num_experts=4, n_routed_experts=4, moe_num_experts=4, num_experts_per_tok=2,
                    moe_topk=2, n_shared_experts=1, n_group=1, topk_group=1)
TINY_DEPTH = 4  # blocks, plus one for each per-layer value the first four lack (e.g. Gemma 3's full attention)
PROMPT_TOKENS = 10  # longer than the tiny sliding window and chunk (4)
LOGIT_TOLERANCE = 1e-4  # float32, same weights: summation order only
GRADIENT_TOLERANCE = 1e-3  # relative to the largest gradient entry of the record


@dataclass
class Conformance:
    """The verdict of the conformance check on one config."""

    model_type: str
    passed: bool
    step: str | None = None  # the step that failed
    reason: str | None = None
    tiny: str = ""  # what was built
    lora_targets: list[str] = field(default_factory=list)  # the chosen set's module names
    lora_family: str = ""  # where they come from: a named override, or "found by role"
    lora_note: str = ""
    frozen_cache: bool | None = None  # whether the dp-step replayed the frozen blocks (lora_blocks)
    seconds: float = 0.0
    cached: bool = False

    def summary(self, name: str) -> str:
        """One paragraph for the log before notebook 00."""
        if not self.passed:
            return f"{name}: failed the conformance check at step '{self.step}': {self.reason}"
        lines = [f"{name} ({self.model_type}): passed the conformance check on a tiny random model of its config "
                 f"({self.tiny}) in {self.seconds:.1f} s{' (cached)' if self.cached else ''}",
                 f"  LoRA targets ({self.lora_family}): {', '.join(self.lora_targets)}"]
        return "\n".join(lines + ([f"  {self.lora_note}"] if self.lora_note else []))


class _Failed(Exception):
    def __init__(self, step: str, reason: str):
        super().__init__(reason)
        self.step, self.reason = step, reason


# --- the tiny instance ---------------------------------------------------------------------------


def tiny_config(config, widths: bool = True):
    """A copy of `config` with the tiny widths and a few blocks that cover every per-layer setting.

    The blocks kept are the first TINY_DEPTH and, for each per-layer list (layer_types and the like), the first
    block of every value those lack; `pruning.prune_config` shortens the lists and moves Qwen's window boundary
    to them, as it does when pruning. With `widths=False` only the depth and the vocabulary shrink: the user's
    own widths, for a config whose sizes depend on each other in ways the tiny widths break (`run` falls back).
    """
    from ppt_core import pruning

    tiny = copy.deepcopy(config)
    heads, kv_heads = getattr(tiny, "num_attention_heads", None), getattr(tiny, "num_key_value_heads", None)
    for key, value in TINY_WIDTHS.items() if widths else [("vocab_size", TINY_WIDTHS["vocab_size"])]:
        _set_int(tiny, key, lambda old, value=value: value)
    for key, most in TINY_AT_MOST.items() if widths else []:
        _set_int(tiny, key, lambda old, most=most: min(old, most))
    if widths and isinstance(heads, int) and isinstance(kv_heads, int):  # keep the kind: MHA, GQA or MQA
        tiny.num_key_value_heads = 4 if kv_heads == heads else 1 if kv_heads == 1 else 2
    if widths and isinstance(getattr(tiny, "qk_rope_head_dim", None), int) and isinstance(
            getattr(tiny, "head_dim", None), int):
        _set_int(tiny, "head_dim", lambda old: tiny.qk_rope_head_dim)  # MLA's rotary part is its head_dim
    for key, value in list(vars(tiny).items()):  # special tokens inside the tiny vocabulary
        if key.endswith("token_id") and isinstance(value, int) and value >= TINY_WIDTHS["vocab_size"]:
            setattr(tiny, key, 1)
        elif key.endswith("token_id") and isinstance(value, list):
            setattr(tiny, key, [v if v < TINY_WIDTHS["vocab_size"] else 1 for v in value])
    depth = architectures.depth(tiny)
    keep = list(range(min(depth, TINY_DEPTH)))
    for values in pruning.per_layer_settings(tiny, depth).values():
        for index, value in enumerate(values):
            if value not in [values[k] for k in keep]:
                keep.append(index)
    pruning.prune_config(tiny, sorted(keep), depth)
    return tiny


def _set_int(config, key: str, new) -> None:
    old = getattr(config, key, None)
    if isinstance(old, int) and not isinstance(old, bool):
        with contextlib.suppress(AttributeError):  # a derived property (Falcon's head_dim) has no setter
            setattr(config, key, new(old))


def _build(config):
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).eval()


# --- the steps -----------------------------------------------------------------------------------


def run(config, lora_targets: str | list[str] = "attention+mlp") -> Conformance:
    """Run every step on a tiny random instance of `config`; the first that fails gives the verdict.

    A `lora_targets` list naming modules the model lacks is a setting error, raised (TrainingConfigError), not
    a verdict on the model.
    """
    from transformers.utils import logging as transformers_logging

    from ppt_core import models

    models.quiet_transformers()
    started = time.perf_counter()
    verdict = Conformance(getattr(config, "model_type", "?"), passed=False)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # a random tiny model's load reports and config notes: not the user's
    try:
        for widths in (True, False):
            try:
                _steps(config, widths, lora_targets, verdict)
                verdict.passed = True
                break
            except _Failed as failed:
                if not widths or failed.step not in ("build", "residual") or not _small_enough(config):
                    verdict.step, verdict.reason = failed.step, failed.reason
                    break
                # The tiny widths may be what broke the first forward: the user's own widths, at small depth.
    finally:
        transformers_logging.set_verbosity(verbosity)
    verdict.seconds = time.perf_counter() - started
    return verdict


FALLBACK_PARAMETERS = 300e6  # the largest model the fallback to the user's own widths builds (float32: 1.2 GB)


def _small_enough(config) -> bool:
    """Whether `config` at small depth and the tiny vocabulary has at most FALLBACK_PARAMETERS parameters
    (counted on the meta device, nothing allocated)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skeleton = AutoModelForCausalLM.from_config(tiny_config(config, widths=False))
    except Exception:  # noqa: BLE001 - what cannot even be laid out cannot be built either
        return False
    return sum(p.numel() for p in skeleton.parameters()) <= FALLBACK_PARAMETERS


def _steps(config, widths: bool, lora_targets, verdict: Conformance) -> None:
    """Every step on a model built from tiny_config(config, widths); raise _Failed at the first that fails."""
    from ppt_core import pruning

    with _step("build"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = tiny_config(config, widths)
        model = _build(tiny)
    depth = architectures.depth(tiny)
    verdict.tiny = f"{depth} blocks, hidden {getattr(tiny, 'hidden_size', '?')}" + (
        "" if widths else ": its own widths, which the tiny ones do not fit")
    with _step("blocks"):
        blocks = architectures.decoder_blocks(model)
        _check_blocks(blocks, model)
    if depth < 3:
        raise _Failed("blocks", f"the tiny instance has {depth} blocks: removal needs at least 3 to keep 2")
    ids = torch.randint(3, _vocab(model), (2, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    with _step("residual"):
        _check_residual(model, blocks, ids)
    with _step("removal"):
        pruned = pruning.prune_layers(model, [1])
        _check_per_layer_settings(tiny, pruned.config, keep=[i for i in range(depth) if i != 1])
        _check_removal(model, blocks, pruned, ids)
    with _step("reload"):
        _check_reload(pruned, ids)
    with _step("kv-cache"):
        _check_kv_cache(pruned, ids[:1])
    with _step("lora", settings_errors=True):
        roles = architectures.lora_roles(pruned) if isinstance(lora_targets, str) else None
        verdict.lora_targets = architectures.lora_target_modules(pruned, lora_targets)
        verdict.lora_family = "given as a list" if roles is None else roles.family
        verdict.lora_note = roles.note if roles is not None and lora_targets == "attention+mlp" else ""
    with _step("per-record"):
        _check_per_record_gradients(pruned, lora_targets)
    with _step("dp-step"):
        verdict.frozen_cache = _check_dp_step(pruned, lora_targets)


@contextlib.contextmanager
def _step(name: str, settings_errors: bool = False):
    """Turn any exception of the step into its verdict (a settings error passes through where it may arise)."""
    try:
        yield
    except _Failed:
        raise
    except TrainingConfigError as err:
        if settings_errors:
            raise
        raise _Failed(name, f"TrainingConfigError: {err}") from err
    except Exception as err:  # noqa: BLE001 - any failure of the tiny model is the verdict, with its message
        message = " ".join(str(err).split())[:400] or type(err).__name__
        raise _Failed(name, f"{type(err).__name__}: {message}") from err


CROSS_ATTENTION = re.compile(r"encoder_attn|cross_?attn|cross_?attention|crossattention", re.IGNORECASE)


def _check_blocks(blocks, model) -> None:
    cross = [n for n, _ in blocks[0].named_modules() if CROSS_ATTENTION.fullmatch(n.rsplit(".", 1)[-1])]
    if cross:
        raise _Failed("blocks", f"its blocks have cross-attention ({cross[0]}): it is the decoder of an "
                                "encoder-decoder, not a decoder-only causal language model")
    shapes = [sorted((n, tuple(p.shape)) for n, p in block.named_parameters()) for block in blocks]
    for index, block_shapes in enumerate(shapes[1:], start=1):
        if block_shapes != shapes[0]:
            only = sorted({n for n, _ in set(block_shapes) ^ set(shapes[0])})[:4]
            raise _Failed("blocks", f"blocks 0 and {index} differ in structure ({', '.join(only)}): blocks that are "
                                    "not identical are placed by index in the config, which removal would shift")
    owner: dict[int, str] = {}
    for index, block in enumerate(blocks):
        for name, parameter in block.named_parameters():
            other = owner.setdefault(id(parameter), f"block {index}'s {name}")
            if not other.startswith(f"block {index}'s"):
                raise _Failed("blocks", f"block {index}'s {name} is {other}: a weight shared across depth, which "
                                        "removing one block would also remove from the others")
    in_blocks = set(owner)
    block_ids = {id(m) for b in blocks for m in b.modules()}
    for name, module in model.named_modules():
        if id(module) in block_ids:
            continue
        shared = [n for n, p in module.named_parameters(recurse=False) if id(p) in in_blocks]
        if shared:
            raise _Failed("blocks", f"{name}.{shared[0]} outside the blocks is also a block's weight: a weight "
                                    "shared across depth")


@torch.no_grad()
def _check_residual(model, blocks, ids) -> None:
    from ppt_core.pruning.similarity import BoundaryStates

    recorder = BoundaryStates(blocks)
    try:
        model.base_model(input_ids=ids, use_cache=False)  # as layer_similarity calls it
        states = recorder.take()
    finally:
        recorder.remove()
    shapes = {tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__ for s in states}
    if len(states) != len(blocks) + 1 or len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise _Failed("residual", f"expected {len(blocks) + 1} hidden states of one shape (batch, tokens, width) at "
                                  f"the block boundaries, got {len(states)} of shapes {sorted(map(str, shapes))}")


def _check_per_layer_settings(full, pruned, keep: list[int]) -> None:
    from ppt_core import pruning

    for key, values in pruning.per_layer_settings(full, architectures.depth(full)).items():
        if getattr(pruned, key, None) != [values[i] for i in keep]:
            raise _Failed("removal", f"the pruned config's per-layer {key} is {getattr(pruned, key, None)}, not "
                                     f"the kept blocks' {[values[i] for i in keep]}")


def _logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **kwargs).logits.float()


def _check_removal(model, blocks, pruned, ids) -> None:
    def skip(module, args, kwargs, output):  # the block's input is its output: removed in place
        hidden = args[0] if args else kwargs["hidden_states"]
        return type(output)([hidden, *output[1:]]) if isinstance(output, (tuple, list)) else hidden

    handle = blocks[1].register_forward_hook(skip, with_kwargs=True)
    try:
        skipped = _logits(model, ids)
    finally:
        handle.remove()
    error = float((_logits(pruned, ids) - skipped).abs().max())
    if not error <= LOGIT_TOLERANCE:
        raise _Failed("removal", f"without block 1 the model's logits differ from the full model's with block 1 "
                                 f"skipped by {error:.3g}: its blocks compute something that depends on their index "
                                 "or on the removed block, which removal would change")


def _check_reload(pruned, ids) -> None:
    from transformers import AutoModelForCausalLM

    from ppt_core import pruning

    with tempfile.TemporaryDirectory() as folder:
        pruned.save_pretrained(folder)
        loaded, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    problems = {key: info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(key)}
    if problems:
        raise _Failed("reload", "plain from_pretrained of the pruned checkpoint does not load its weights: "
                                + "; ".join(f"{k} {sorted(map(str, v))[:3]}" for k, v in problems.items()))
    for key, value in pruning.per_layer_settings(pruned.config, architectures.depth(pruned.config)).items():
        if getattr(loaded.config, key, None) != value:
            raise _Failed("reload", f"the reloaded config's {key} is {getattr(loaded.config, key, None)}, "
                                    f"the pruned model's {value}")
    error = float((_logits(loaded.eval(), ids) - _logits(pruned, ids)).abs().max())
    if not error <= LOGIT_TOLERANCE:
        raise _Failed("reload", f"the reloaded pruned model's logits differ from the pruned model's by {error:.3g}: "
                                "its blocks derive something from their index or from the model's depth when "
                                "they are built (a depth-scaled residual, say), which a smaller model rebuilds "
                                "differently")


def _check_kv_cache(pruned, prompt, new_tokens: int = 6) -> None:
    with torch.no_grad():
        out = pruned.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, use_cache=True, output_logits=True,
                              return_dict_in_generate=True, pad_token_id=0)
    cached = torch.stack(out.logits, dim=1).float()  # (1, new, vocab): each step's raw logits
    uncached = _logits(pruned, out.sequences)[:, prompt.shape[1] - 1: -1]
    error = float((cached - uncached).abs().max())
    if not error <= LOGIT_TOLERANCE:
        raise _Failed("kv-cache", f"greedy decoding with the KV cache gives logits that differ from the uncached "
                                  f"forward's by {error:.3g}")


def _train_config(lora_targets, **overrides):
    from ppt_core.dp.privacy import DPConfig
    from ppt_core.dp.train_config import TrainConfig

    settings = dict(lora_rank=2, lora_alpha=4, lora_targets=lora_targets, lora_blocks=None, epochs=0.5,
                    learning_rate=1e-2, expected_batch_size=4, physical_batch_size=2, max_length=PROMPT_TOKENS,
                    bf16=False, progress=False, device="cpu",
                    dp=DPConfig(target_epsilon=8, delta=1e-3, accountant="rdp"))
    return TrainConfig(**{**settings, **overrides})


def _records(n: int, vocab: int, seed: int):
    """n right-padded records of different lengths, as batching.record_dataset makes them (labels -100 = padding)."""
    from torch.utils.data import TensorDataset

    from ppt_core.data import tokens

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (n, PROMPT_TOKENS), generator=generator)
    lengths = torch.tensor([PROMPT_TOKENS - (3 * i) % 7 for i in range(n)])
    mask = (torch.arange(PROMPT_TOKENS)[None] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(mask == 0, 0)
    return TensorDataset(input_ids, mask, input_ids.masked_fill(mask == 0, tokens.IGNORE_INDEX))


def _vocab(model) -> int:
    return min(TINY_WIDTHS["vocab_size"], model.get_input_embeddings().num_embeddings)


def _check_per_record_gradients(pruned, lora_targets) -> None:
    from opacus import GradSampleModule

    from ppt_core.dp import training

    peft_model = training.lora_model(pruned, _train_config(lora_targets), torch.device("cpu"))
    with torch.no_grad():  # B starts at zero (so would every gradient of A): random adapters test both
        generator = torch.Generator().manual_seed(1)
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    peft_model.eval()  # dropout would make the two passes differ; the decomposition is what is tested. Opacus
    for module in peft_model.modules():  # records activations only of modules in training mode: the adapters
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            module.train()
    named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    input_ids, mask, labels = _records(3, _vocab(pruned), seed=2).tensors
    alone = []
    for i in range(3):
        width = int(mask[i].sum())
        logits = peft_model(input_ids=input_ids[i:i + 1, :width], attention_mask=mask[i:i + 1, :width]).logits
        loss = training.record_losses(logits, labels[i:i + 1, :width]).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # an adapter the forward never reaches: 0
        alone.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    sampler = GradSampleModule(peft_model, batch_first=True, loss_reduction="sum")
    try:
        loss = training.record_losses(sampler(input_ids=input_ids, attention_mask=mask).logits, labels).sum()
        with warnings.catch_warnings():  # the frozen embedding's output needs no gradient: that is the point
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        for index, (name, parameter) in enumerate(named):
            adapted = name.split(".lora_")[0].split(".", 2)[-1]  # the adapted module's path, for the message
            per_record = getattr(parameter, "grad_sample", None)
            if per_record is None and not any(bool(g[index].any()) for g in alone):
                continue  # an adapter the forward never reaches has no gradient, batched or alone
            if per_record is None or per_record.shape[0] != 3:
                shape = None if per_record is None else tuple(per_record.shape)
                raise _Failed("per-record", f"Opacus gave per-record gradients of shape {shape} for the adapter of "
                                            f"{adapted}, not one per record of a batch of 3: that layer sees the "
                                            "batch's tokens flattened together, so DP-SGD would clip tokens, not "
                                            "records; leave it out of lora_targets (\"attention\", or a list)")
            for i in range(3):
                error = float((per_record[i] - alone[i][index]).abs().max())
                scale = float(alone[i][index].abs().max())
                if not error <= GRADIENT_TOLERANCE * max(scale, 1e-6):
                    raise _Failed("per-record", f"record {i}'s gradient of the adapter of {adapted} in a batch "
                                                f"differs from its gradient computed alone by {error:.3g} (largest "
                                                f"entry {scale:.3g}): the model mixes the records of a batch, so "
                                                "DP-SGD would not clip one record's contribution")
    finally:
        sampler._close()


def _check_dp_step(pruned, lora_targets) -> bool:
    from ppt_core.dp import head_loss, training

    depth = architectures.depth(pruned.config)
    config = _train_config(lora_targets, lora_blocks=depth - 1)  # the frozen-block cache below the adapted ones
    peft_model = training.lora_model(pruned, config, torch.device("cpu"))
    dataset = _records(8, _vocab(pruned), seed=3)
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    with contextlib.redirect_stdout(io.StringIO()):  # the cache says when it is not used: the verdict keeps it
        prefix = training._frozen_prefix(peft_model, dataset, config)
    run = training.prepare(peft_model, dataset, config, prefix=prefix)
    try:
        training.run_steps(run, steps=2)
    finally:
        run.module.cleanup()
        head_loss.uninstall(peft_model, run.head)  # the model's own head again, under its own name
    changed = {name for name, p in peft_model.named_parameters() if not torch.equal(p.detach(), before[name])}
    frozen = sorted(n for n in changed if "lora_" not in n)
    if frozen:
        raise _Failed("dp-step", f"a DP-SGD step changed weights other than the adapters: {', '.join(frozen[:3])}")
    if not any("lora_" in n for n in changed):
        raise _Failed("dp-step", "a DP-SGD step changed no adapter weight (the opacus#820 pattern)")
    return prefix is not None


# --- the verdict, kept -------------------------------------------------------------------------


# The library code a verdict depends on (its files under ppt_core/): a change to any of it (or to a library version)
# is a new check.
CHECKED_CODE = ("stages/conformance", "models/architectures", "pruning/removal", "pruning/similarity",
                "dp/frozen_prefix", "data/batching", "dp/privacy", "dp/training", "dp/train_config")


def _key(config, lora_targets) -> str:
    import opacus
    import peft
    import transformers

    settings = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    code = [hashlib.sha256((Path(__file__).parent.parent / f"{m}.py").read_bytes()).hexdigest() for m in CHECKED_CODE]
    text = json.dumps([settings, lora_targets, code, transformers.__version__, torch.__version__, peft.__version__,
                       opacus.__version__], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def check(config, lora_targets: str | list[str] = "attention+mlp", name: str | None = None) -> Conformance:
    """The conformance verdict of `config` (kept under the model cache); ArchitectureError, naming the model, the
    step that failed and why, where it fails. The config's own refusals (`architectures.check_config`) come first.
    """
    architectures.check_config(config, name)
    kept = f"{getattr(config, 'model_type', 'model')}-{_key(config, lora_targets)}.json"
    path = artifacts.cache_dir() / "conformance" / kept
    if path.exists():
        verdict = Conformance(**json.loads(path.read_text()))
        verdict.cached = True
    else:
        verdict = run(config, lora_targets)
        _write(path, verdict)
    if not verdict.passed:
        raise ArchitectureError(f"{architectures.describe(config, name)} cannot be pruned and fine-tuned here: it "
                                f"failed the conformance check at step '{verdict.step}': {verdict.reason}")
    return verdict


def _write(path: Path, verdict: Conformance) -> None:
    artifacts.write_text(path, json.dumps({k: v for k, v in asdict(verdict).items() if k != "cached"}, indent=1))


def check_params(params: dict):
    """The profile's model passes the conformance check with its LoRA targets; print the verdict and return the
    model's config (for the checks that depend on it, such as the pruning depth). Reads the config only: an
    unsupported model stops before notebook 00."""
    config = architectures.model_config(params["model"])
    verdict = check(config, params["lora_targets"], params["model"])
    print(verdict.summary(params["model"]))
    return config
