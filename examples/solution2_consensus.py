"""The guide's Solution 2, as written, with the user's own helpers defined around it.

Run: python examples/solution2_consensus.py
"""

import asyncio
from dataclasses import dataclass

import numpy as np

# ---- the user's own helpers (not part of the guide's code) -------------------------


@dataclass
class Observation:
    id: str
    type: str
    log_likelihood_ratio: float
    confidence: float
    timestamp: float
    observer_node: str


def map_to_evidence_type(kind):
    from swarmguard import map_to_evidence_type as parse
    return parse(kind)


def observations_for(agent_id, compromised, rng):
    kinds = ["behavioral_anomaly", "resource_usage", "communication_pattern", "peer_report"]
    out = []
    for k in range(40):
        node = f"node-{k % 12}"
        liar = node in ("node-0", "node-1", "node-2")            # 3 of 12 observers lie
        llr = rng.normal(2.0 if compromised else -1.0, 1.0)
        if liar:
            llr = -8.0 if compromised else 8.0                    # whitewash or frame
        out.append(Observation(f"{agent_id}-{k}", kinds[k % 4], llr, rng.uniform(0.6, 1.0), float(k), node))
    return out


# ---- the guide's code, as written ----------------------------------------------------
from distributed_bayesian_consensus import StableBayesianConsensus, BayesianEvidence, EvidenceType  # noqa: E402

# Initialize with your parameters
consensus = StableBayesianConsensus(
    byzantine_threshold=0.33,  # Your security requirement
    partition_size=10000       # Optimal for numerical stability
)

# Your evidence collection becomes:
async def process_behavioral_evidence(agent_id, observations):
    for obs in observations:
        evidence = BayesianEvidence(
            evidence_id=obs.id,
            agent_id=agent_id,
            evidence_type=map_to_evidence_type(obs.type),
            log_odds=obs.log_likelihood_ratio,  # Your existing Bayesian calc
            confidence=obs.confidence,
            timestamp=obs.timestamp,
            source_node=obs.observer_node
        )
        
        await consensus.add_evidence(evidence)
    
    # Get numerically stable result
    result = await consensus.distributed_evidence_consensus(agent_id)
    return result['probability']  # Use this instead of your current calculation
# ---- end of the guide's code ---------------------------------------------------------


async def main():
    rng = np.random.default_rng(1)
    p_bad = await process_behavioral_evidence("agent-bad", observations_for("agent-bad", True, rng))
    p_good = await process_behavioral_evidence("agent-good", observations_for("agent-good", False, rng))
    print(f"P(compromised): agent-bad {p_bad:.6f}, agent-good {p_good:.3e}")
    return p_bad, p_good


if __name__ == "__main__":
    asyncio.run(main())
