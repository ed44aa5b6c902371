"""What calibrated p-values did over a run of rounds: shared by ``simulate`` and ``detect``.

A run with ``calibrate=True`` tests each round against the empirical null of the
scores of earlier rounds' members not flagged (:mod:`swarmguard.structures.score_null`).
:func:`null_state` records, per round, the null as that round met it; and
:func:`calibration_summary` sums the rounds into the flags and realised
false-discovery rate of the *calibrated* rounds apart from the *warm-up* rounds
(decided on the mode's own p-values while the null was too small), with a sentence
saying why when the calibrated rounds could not flag.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["null_state", "calibration_summary"]


def _f(x: float) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def null_state(null: Any, agents: int, q: float | None, levels: int) -> dict[str, Any]:
    """A calibrated round's null as the round met it (read it *before* the round, which admits
    its members after the decision): whether it was warm (the population's p-values calibrated),
    its size, smallest p-value and the fewest flags BH could make from it. ``{}`` without a null."""
    if null is None:
        return {}
    warm = bool(null.warm)
    return {"calibrated": warm, "null_scores": int(null.count), "null_p_floor": null.p_floor,
            "fewest_calibrated_flags": null.fewest_flags(agents, q, levels) if warm and q is not None else None}


def calibration_summary(rounds: list[dict[str, Any]], agents: int, q: float | None, levels: int) -> dict[str, Any]:
    """What calibration did over a run: the flags and realised FDR of the calibrated rounds apart
    from the warm-up rounds' (the mode's own p-values), and a sentence saying why when the
    calibrated rounds could not flag (the null's resolution, :mod:`swarmguard.structures.score_null`).

    Each round is a dict with ``round``, ``flagged_anomalous``, ``flags_false`` (the false flags,
    ground truth known; None when it is not, and then every false count and FDR is None) and the
    keys of :func:`null_state`. ``agents`` is what Benjamini-Hochberg decided over in the last
    round (for the note)."""
    cal = [rd for rd in rounds if rd.get("calibrated")]
    warm_up = [rd for rd in rounds if not rd.get("calibrated")]
    known = all(rd.get("flags_false") is not None for rd in rounds)

    def false_of(group: list[dict[str, Any]]) -> int | None:
        return sum(rd["flags_false"] for rd in group) if known else None

    flags = sum(rd["flagged_anomalous"] for rd in cal)
    false = false_of(cal)
    last = cal[-1] if cal else None
    out: dict[str, Any] = {
        "rounds_calibrated": len(cal),
        "first_calibrated_round": cal[0]["round"] if cal else None,
        "flags_calibrated": flags,
        "flags_false_calibrated": false,
        "realised_fdr_calibrated": _f(false / flags) if flags and false is not None else None,
        "flags_warm_up": sum(rd["flagged_anomalous"] for rd in warm_up),
        "flags_false_warm_up": false_of(warm_up),
        "last_null_scores": last["null_scores"] if last else None,
        "last_null_p_floor": last["null_p_floor"] if last else None,
        "last_fewest_calibrated_flags": last["fewest_calibrated_flags"] if last else None,
    }
    wrong = "" if not known else f", {out['flags_false_warm_up']} false"
    where = (f"{len(warm_up)} warm-up round(s) decided on the mode's own p-values "
             f"({out['flags_warm_up']} flags{wrong})")
    if not cal:
        note = f"calibration never started: the null did not reach its minimum size; {where}."
    elif flags:
        truth = f", {false} false (realised FDR {false / flags:.4f})" if false is not None else ""
        note = (f"calibrated from round {out['first_calibrated_round']}: {flags} flags in calibrated rounds"
                f"{truth}; {where}.")
    else:
        fewest = out["last_fewest_calibrated_flags"]
        # only the population level is calibrated: a cohort level keeps the mode's own p-values, which
        # have no floor (a lone agent far out in its cohort is flagged whatever the null's size)
        on = ("on calibrated p-values" if levels == 1 else
              "on the population level's calibrated p-values (the cohort level keeps the mode's own p-values, "
              "which have no such floor, and flagged nobody either)")
        note = (f"calibrated rounds flagged nobody: in the last round the null held {out['last_null_scores']:,} "
                f"scores, so its smallest p-value was 1/{out['last_null_scores'] + 1:,}, and Benjamini-Hochberg "
                f"at q={q} over {agents:,} agents ({levels} level(s), Bonferroni) can flag no group smaller "
                f"than {fewest:,} agents {on}; unflagged anomalies enter the null and raise "
                f"later rounds' p-values. The p-values stay calibrated (valid; no fall-back to the mode's own); {where}."
                if fewest is not None else f"calibrated rounds flagged nobody; {where}.")
    out["note"] = note
    return out
