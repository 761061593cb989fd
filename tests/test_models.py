"""Model resolution and loading: the tiny test model, the embedded SmolLM2, and bad specs."""

import pytest
import torch

from ppt_core import models
from ppt_core.scoring.evaluation import perplexity


def test_tiny_model_is_seeded_and_small(tiny):
    model, tokenizer = tiny
    again, _ = models.load_model("tiny-random-llama", device="cpu")
    assert model.config.num_hidden_layers == models.TINY_LLAMA["num_hidden_layers"]
    assert model.config.vocab_size == len(tokenizer)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    batch = tokenizer(["hello world"], return_tensors="pt")
    assert model(**batch).logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))


def test_tiny_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.load_model("tiny-random-llama", device="cpu")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("spec", ["no-such-org/no-such-model", "smollm3-9000"])
def test_unknown_model_is_one_clear_error(spec):
    with pytest.raises(models.ModelSpecError, match=spec):
        models.load_model(spec)


def test_local_folder_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(models.ModelSpecError, match="config.json"):
        models.load_model(str(tmp_path))


def test_cuda_requested_without_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        models.resolve_device("cuda")


def test_local_folder_round_trip(tiny, tmp_path):
    from ppt_core.run import artifacts

    model, tokenizer = tiny
    artifacts.save_model(model, tokenizer, tmp_path / "ckpt")
    loaded, _ = models.load_model(str(tmp_path / "ckpt"), device="cpu")
    batch = tokenizer(["a short check"], return_tensors="pt")
    assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_embedded_model_answers_paris(smollm):
    model, tokenizer = smollm
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_embedded_model_reads_english(smollm):
    model, tokenizer = smollm
    text = ["The committee will meet on Tuesday to discuss the budget for the coming year."]
    assert perplexity(model, tokenizer, text, progress=False) < 100


def test_embedded_conversion_from_gguf_matches_cache(smollm, tmp_path, monkeypatch):
    """The GGUF -> safetensors conversion, run afresh into an empty cache, gives the cached weights."""
    monkeypatch.setenv("PPT_CACHE_DIR", str(tmp_path))
    from_gguf = models.embedded_config()  # an empty cache: the config comes from the GGUF file itself
    fresh, tokenizer = models.load_model("smollm2-135m", device="cpu")
    cached = models.embedded_config()
    for key in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size"):
        assert getattr(from_gguf, key) == getattr(cached, key) == getattr(smollm[0].config, key), key
    assert (tmp_path / "smollm2-135m" / "model.safetensors").exists()
    assert "quantization_config" not in fresh.config.to_dict()
    batch = tokenizer(["Discharge summary for a patient."], return_tensors="pt")
    assert torch.allclose(fresh(**batch).logits, smollm[0](**batch).logits)
