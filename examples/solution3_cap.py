"""The guide's Solution 3, as written, with the user's own helpers defined around it.

Run: python examples/solution3_cap.py
"""

import asyncio
from dataclasses import dataclass

import numpy as np

# ---- the user's own helpers (not part of the guide's code) -------------------------
SIM_TIME = [0.0]
thresholds = []


@dataclass
class Telemetry:
    id: int
    agent_id: int
    timestamp: float
    features: list
    anomaly_score: float
    region: str


def adjust_detection_thresholds(confidence_factor):
    from swarmguard import widened_threshold
    thresholds.append(widened_threshold(3.0, confidence_factor))


# ---- the guide's code, as written ----------------------------------------------------
from statistical_cap_resolver import StatisticalCAPResolver, ConsistencyModel, StatisticalUpdate  # noqa: E402

# Initialize with statistical consistency
resolver = StatisticalCAPResolver(
    consistency_model=ConsistencyModel.STATISTICAL,
    max_staleness_seconds=5.0,  # Your accuracy requirement
    confidence_decay_rate=0.1   # Tunable for your needs
)

# Your distributed updates become:
async def distributed_behavioral_update(behavioral_data):
    update = StatisticalUpdate(
        update_id=behavioral_data.id,
        agent_id=behavioral_data.agent_id,
        timestamp=behavioral_data.timestamp,
        feature_vector=behavioral_data.features,
        anomaly_score=behavioral_data.anomaly_score,
        source_partition=behavioral_data.region  # Geographic/logical partition
    )
    
    result = await resolver.handle_update(update)
    
    # Check confidence during partitions
    if result['confidence_factor'] < 0.8:
        # Degraded mode - wider confidence intervals
        adjust_detection_thresholds(result['confidence_factor'])
# ---- end of the guide's code ---------------------------------------------------------


async def main():
    # simulated time so the example runs instantly: the guide builds the resolver with
    # the default clock (time.monotonic), so the simulated clock starts from its reading
    import time
    base = time.monotonic()
    resolver._clock = lambda: base + SIM_TIME[0]
    rng = np.random.default_rng(2)
    uid = 0
    for step in range(45):
        SIM_TIME[0] = float(step)
        if step == 10:
            resolver.partition([["eu", "us"], ["ap"]])
        if step == 35:
            resolver.heal()
        for region in ("eu", "us", "ap"):
            uid += 1
            await distributed_behavioral_update(Telemetry(uid, uid % 300, base + SIM_TIME[0], list(rng.normal(size=4)),
                                                          float(rng.random()), region))
    print(f"threshold widened {len(thresholds)} times during the partition; "
          f"largest {max(thresholds):.2f} (base 3.0); confidence now {resolver.confidence_factor('eu'):.3f}")
    return thresholds


if __name__ == "__main__":
    asyncio.run(main())
