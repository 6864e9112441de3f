"""The promotion rule: a new model version replaces production only when it passed the quality
gate and beats production on the same test split."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Decision:
    promoted: bool
    reason: str
    metric: str
    new_value: float
    production_value: float | None = None
    production_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    new_value: float,
    gate_passed: bool,
    production_value: float | None,
    production_version: str | None,
    metric: str = "plain_accuracy",
    min_improvement: float = 0.0,
    production_classes: list[str] | None = None,
    classes: list[str] | None = None,
) -> Decision:
    """``production_value`` is production's ``metric`` on the new version's test split (None: no
    production version yet). ``production_classes``: set when production classifies other classes
    than the new version (``classes``): the two cannot be compared, and the new one is not
    promoted."""
    common = {
        "metric": metric,
        "new_value": new_value,
        "production_value": production_value,
        "production_version": production_version,
    }
    if not gate_passed:
        return Decision(False, "quality gate failed", **common)
    if production_classes is not None:
        return Decision(
            False,
            f"production (version {production_version}) classifies {production_classes}, this "
            f"version {classes}: not comparable on one test split; promote it by hand "
            "(zenml model version update ... --stage production)",
            **common,
        )
    if production_value is None:
        return Decision(True, "no production version yet", **common)
    if new_value > production_value + min_improvement:
        return Decision(
            True,
            f"{metric} {new_value:.4f} beats production (version {production_version}) "
            f"{production_value:.4f} by more than {min_improvement:g}",
            **common,
        )
    return Decision(
        False,
        f"{metric} {new_value:.4f} does not beat production (version {production_version}) "
        f"{production_value:.4f} by more than {min_improvement:g}",
        **common,
    )
