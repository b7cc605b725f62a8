"""The forgetting watch: the price of domain gain. Each evaluation's forgetting signals (general loss,
chat loss, instruction following) against their limits, relative to step 0, and the decision they lead to:
warn, stop, or adapt the replay share (`evaluation.forgetting`)."""

from __future__ import annotations

from cpt_core.api.v1alpha1 import EvalResult, Forgetting, ForgettingAction


class ForgettingWatch:
    """The price of domain gain: forgetting signals against their limits, relative to step 0."""

    def __init__(self, policy: Forgetting) -> None:
        self.policy = policy
        self.detected = False
        self.signals: list[str] = []

    def measures(self, baseline: EvalResult | None, latest: EvalResult | None) -> dict[str, float | None]:
        """generalLoss and instructionLoss: relative increase; instructionFollowing: absolute drop."""
        out: dict[str, float | None] = {"generalLoss": None, "instructionLoss": None, "instructionFollowing": None}
        if baseline is None or latest is None:
            return out
        if baseline.general_loss and latest.general_loss is not None:
            out["generalLoss"] = latest.general_loss / baseline.general_loss - 1.0
        if baseline.instruction_loss and latest.instruction_loss is not None:
            out["instructionLoss"] = latest.instruction_loss / baseline.instruction_loss - 1.0
        if baseline.instruction_following and latest.instruction_following:
            drop = baseline.instruction_following.prompt_accuracy - latest.instruction_following.prompt_accuracy
            out["instructionFollowing"] = drop
        return out

    def limits(self) -> dict[str, float | None]:
        p = self.policy
        return {
            "generalLoss": p.max_general_loss_increase,
            "instructionLoss": p.max_instruction_loss_increase,
            "instructionFollowing": p.max_instruction_following_drop,
        }

    def observe(self, baseline: EvalResult | None, latest: EvalResult | None) -> list[str]:
        """The signals over their limit at this evaluation (also remembered in `signals`)."""
        measures, limits = self.measures(baseline, latest), self.limits()
        self.signals = [
            name
            for name, value in measures.items()
            if value is not None and limits[name] is not None and value > limits[name]  # type: ignore[operator]
        ]
        self.detected = self.detected or bool(self.signals)
        return self.signals

    def recovered(self, baseline: EvalResult | None, latest: EvalResult | None) -> bool:
        """Every watched signal is under half its limit (`adapt` then lowers the replay share back)."""
        measures, limits = self.measures(baseline, latest), self.limits()
        watched = [(measures[n], limit) for n, limit in limits.items() if limit is not None and measures[n] is not None]
        return bool(watched) and all(value <= limit / 2 for value, limit in watched)  # type: ignore[operator]

    @property
    def should_stop(self) -> bool:
        return bool(self.signals) and self.policy.action == ForgettingAction.stop

    def describe(self, baseline: EvalResult | None, latest: EvalResult | None) -> str:
        measures, limits = self.measures(baseline, latest), self.limits()
        parts = []
        for name in self.signals:
            value, limit = measures[name], limits[name]
            unit = "points" if name == "instructionFollowing" else "%"
            parts.append(f"{name} {100 * (value or 0):+.1f} {unit} (limit {100 * (limit or 0):.1f})")
        return "; ".join(parts)
