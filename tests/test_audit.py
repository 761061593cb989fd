"""The one-run audit: jax-privacy's bounds behave as the theory says, a memorising non-private run is caught
(lower bound above 1), a DP run at ε = 1 never is, and a bound above the claim stops the study."""

import numpy as np
import pytest
import torch

from ppt_core import audit, data, membership, profiles, tokens, train_config, training
from ppt_core.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bounds_on_synthetic_scores():
    rng = np.random.default_rng(0)
    included = rng.random(256) < 0.5
    perfect = audit.epsilon_lower_bounds(included.astype(float), included, delta=1e-5)
    noise = audit.epsilon_lower_bounds(rng.normal(size=256), included, delta=1e-5)
    assert perfect["one_run"] > 2 and perfect["fdp"] >= perfect["one_run"] and perfect["auc"] == 1
    assert noise["one_run"] == 0 and noise["fdp"] == 0
    # More canaries, same perfect separation: a tighter (higher) bound.
    more = rng.random(1024) < 0.5
    assert audit.epsilon_lower_bounds(more.astype(float), more, delta=1e-5)["one_run"] > perfect["one_run"]


def test_jax_privacy_is_used_without_jax():
    import sys

    audit.epsilon_lower_bounds(np.r_[1.0, 0.0], np.r_[True, False], delta=1e-5)
    assert "jax" not in sys.modules


def test_a_bound_above_the_claim_stops_with_the_arm_named():
    bounds = {"one_run": 1.3, "fdp": 2.1}
    audit.check_claim("pruned-dp8", bounds, 8.0)
    audit.check_claim("full-nodp", bounds, None)
    with pytest.raises(audit.GuaranteeViolation, match="'pruned-dp1'.*2.100.*1.000"):
        audit.check_claim("pruned-dp1", bounds, 1.0)


@pytest.fixture(scope="module")
def audit_data(tmp_path_factory):
    params = profiles.get_profile("smoke", n_audit_canaries=96)
    splits = data.build_dataset(params, tmp_path_factory.mktemp("data"))
    return params, splits


def _audit_bounds(arm, start, splits, delta):
    scores = membership.audit_scores(membership.audit_logprobs(*arm, splits.audit, progress=False),
                                     membership.audit_logprobs(*start, splits.audit, progress=False))
    return audit.epsilon_lower_bounds(scores, np.array([r["included"] for r in splits.audit]), delta=delta)


def test_a_memorising_non_private_run_is_caught(audit_data, tiny):
    """All weights, several epochs, no DP: the model learns the included canaries' random words (only the
    audit canaries of train are trained on, to keep the test short; the notes would not change the point)."""
    params, splits = audit_data
    model, tokenizer = load_model("tiny-random-llama", device="cpu")
    batch = tokens.encode(tokenizer, [r["text"] for r in splits.train if r["kind"] == "audit"], 16)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        for index in torch.randperm(len(batch["input_ids"])).split(32):
            loss = model(**{k: v[index] for k, v in batch.items()}).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    bounds = _audit_bounds((model, tokenizer), tiny, splits, params["delta"])
    assert bounds["one_run"] > 1 and bounds["fdp"] > 1, bounds


def test_a_dp_run_at_epsilon_one_stays_below_its_claim(audit_data, tiny):
    params, splits = audit_data
    config = train_config.config_from_params(params, 1.0, progress=False, learning_rate=5e-2)
    peft_model, result = training.finetune(*tiny, splits.texts("train"), config)
    bounds = _audit_bounds((peft_model, tiny[1]), tiny, splits, params["delta"])
    assert result.epsilon <= 1.0
    assert max(bounds["one_run"], bounds["fdp"]) <= 1.0
    audit.check_claim("full-dp1", bounds, result.epsilon)


def test_a_missing_or_changed_auditor_stops_before_any_work(monkeypatch):
    params = profiles.get_profile("smoke")
    audit.check_params(params)  # the pinned jax-privacy has what the audit calls
    audit.check_params(dict(params, n_audit_canaries=0))

    class Changed:  # a jax-privacy whose auditor lost a method
        class CanaryScoreAuditor:
            def epsilon_one_run(self):
                return 0.0

    monkeypatch.setattr(audit, "_auditing", lambda: Changed)
    with pytest.raises(ValueError, match="has no epsilon_one_run_fdp, attack_auroc"):
        audit.check_params(params)

    def missing():
        raise ImportError("No module named 'jax_privacy'")

    monkeypatch.setattr(audit, "_auditing", missing)
    with pytest.raises(ValueError, match="cannot load jax-privacy's auditor .* run `make setup`"):
        audit.check_params(params)
    audit.check_params(dict(params, n_audit_canaries=0))  # no audit, nothing to load
