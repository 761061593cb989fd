"""The composed checks: every named profile passes on a machine that has never run the study, and a check
that spans two stages (the model's depth against pruning's levels) is made where the stages meet."""

import pytest
from transformers import LlamaConfig

from ppt_core import pruning
from ppt_core.run import profiles
from ppt_core.study import checks


@pytest.mark.parametrize("name", sorted(profiles.PROFILES))
def test_every_profile_passes_its_checks_on_an_empty_model_cache(name, tmp_path, monkeypatch):
    """A fresh machine has no converted embedded model: the checks read its config from the GGUF file itself
    (they once answered with the tiny model's 6 blocks, so quick's 12-block sweep was refused) and convert
    nothing: the cache holds the conformance verdict and no model."""
    monkeypatch.setenv("PPT_CACHE_DIR", str(tmp_path))
    checks.check_params(profiles.get_profile(name))
    assert [p.name for p in tmp_path.iterdir()] == ["conformance"]


def test_pruning_deeper_than_the_model_stops_with_the_depth(smoke_params, tmp_path):
    folder = tmp_path / "shallow"
    shallow = LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    shallow.save_pretrained(folder)
    with pytest.raises(pruning.PruningError, match="asks to remove 4 blocks but the model has only 3"):
        checks.check_params(dict(smoke_params, model=str(folder), n_remove=1, prune_sweep=[0, 4]))
