"""Every stage's parameter checks, composed: the one call that stops an impossible setting before any work.

Each stage's module checks its own parameters (`check_params`); the checks that span two stages
(how deep the model is against how many blocks pruning removes) are made here, where the stages
meet, so no stage imports one that comes after it. run_all.py calls `check_params` before notebook 00.
"""

from __future__ import annotations

from ppt_core import data, models, pruning
from ppt_core.dp import train_config
from ppt_core.leakage import audit, generation
from ppt_core.models import architectures
from ppt_core.pruning import similarity
from ppt_core.run import profiles
from ppt_core.stages import attacks, conformance


def check_params(params: dict) -> None:
    """Stop with one clear message on any impossible setting, in the order the stages run."""
    profiles.check_seeds(params["seeds"])
    for stage in (models, data, similarity, pruning):
        stage.check_params(params)
    # The model's config (no weights) and the conformance check on a tiny random model of it: a model that cannot
    # be pruned and fine-tuned here stops before notebook 00, with the step that failed and why.
    config = conformance.check_params(params)
    pruning.check_depth(params, architectures.depth(config))
    for stage in (train_config, generation, attacks, audit):
        stage.check_params(params)
    models.check_tokenizer(params["model"])  # last: it reads the tokenizer's files
