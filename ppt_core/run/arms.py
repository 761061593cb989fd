"""The arms of the study, defined once: what each arm is, where it starts, and its twin.

    base          the profile's model as loaded                 family full,   untrained
    pruned-noft   pruned by notebook 02, not fine-tuned          family pruned, untrained
    full-nodp     LoRA on base without DP (notebook 03)          family full,   non-private
    pruned-nodp   LoRA on pruned-noft without DP                 family pruned, non-private
    full-dp<ε>    LoRA on base under DP-SGD at target ε          family full,   private
    pruned-dp<ε>  LoRA on pruned-noft under DP-SGD at target ε   family pruned, private

An arm's name is its directory under runs/<run>/models/ and its key in results.json. Every other
module asks this one what an arm is (`parse`) instead of reading its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("full", "pruned")
_TRAINED = re.compile(r"^(full|pruned)-(nodp|dp(\d+(?:\.\d+)?(?:e[+-]\d+)?))$")  # ε as :g writes it


@dataclass(frozen=True)
class Arm:
    """One arm: its family, whether it was fine-tuned, and its target ε (None unless private)."""

    name: str
    family: str  # "full" (starts from base) or "pruned" (starts from pruned-noft)
    trained: bool
    epsilon: float | None = None  # the DP target; None for non-private and untrained arms

    @property
    def private(self) -> bool:
        return self.epsilon is not None

    @property
    def start(self) -> str:
        """The untrained arm this one starts from (itself for base and pruned-noft). A fine-tuned arm is
        its start with LoRA merged in: the same architecture and cost, and the reference its attacks are
        calibrated by."""
        return "pruned-noft" if self.family == "pruned" else "base"

    @property
    def twin(self) -> str | None:
        """The non-private arm of the same family, for a private arm; else None."""
        return f"{self.family}-nodp" if self.private else None

    @property
    def pruned(self) -> bool:
        return self.family == "pruned"


def parse(name: str) -> Arm:
    """The Arm that `name` denotes; a name no profile can produce is refused."""
    if name == "base":
        return Arm(name, "full", trained=False)
    if name == "pruned-noft":
        return Arm(name, "pruned", trained=False)
    match = _TRAINED.match(name)
    if not match:
        raise ValueError(f"unknown arm {name!r}: arms are base, pruned-noft, <full|pruned>-nodp and "
                         "<full|pruned>-dp<ε> (e.g. pruned-dp8)")
    family, _, epsilon = match.groups()
    return Arm(name, family, trained=True, epsilon=None if epsilon is None else float(epsilon))


def trained_name(family: str, epsilon: float | None) -> str:
    """The name of a fine-tuned arm: <family>-nodp, or <family>-dp<ε> (ε in its shortest form, 8 not 8.0)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} (got {family!r})")
    return f"{family}-nodp" if epsilon is None else f"{family}-dp{float(epsilon):g}"


def trained_arm_names(params: dict) -> list[str]:
    """The fine-tuned arms of a profile: for each family, non-private and one per target ε, and after the first
    family's its dose arms (dose_arm_names)."""
    names = []
    for family in params["train_arms"]:
        names += [trained_name(family, epsilon) for epsilon in [None] + list(params["epsilons"])]
        if family == params["train_arms"][0]:
            names += dose_arm_names(params)
    return names


def dose_arm_names(params: dict) -> list[str]:
    """The dose arms of a profile: DP arms of its first family at each of `dose_epsilons`, targets far above any
    claim, that show where memorisation becomes visible between the claimed arms and the non-private twin. They
    are attacked like every arm; the claims are decided on the arms of `epsilons`."""
    if not params["train_arms"]:
        return []
    return [trained_name(params["train_arms"][0], epsilon) for epsilon in params.get("dose_epsilons", [])]


def arm_names(params: dict) -> list[str]:
    """Every arm of the study: base, pruned-noft, then the fine-tuned arms."""
    return ["base", "pruned-noft"] + trained_arm_names(params)


def checkpoint(params: dict, name: str) -> str:
    """The model spec (hub name, or a local folder) that loads an arm."""
    from ppt_core.run import artifacts

    arm = parse(name)
    if name == "base":
        return params["model"]
    folder = artifacts.run_paths(params).model(name)
    return str(folder if not arm.trained else Path(folder) / "merged")
