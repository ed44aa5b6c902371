"""The guide's complete integration example, as written, with the user's own helpers.

The guide's class calls ``self.create_evidence``, ``self.create_statistical_update``
and ``self.should_trigger_response`` without defining them; those are the user's
helpers, supplied here from swarmguard's own ``DistributedBehavioralDetector``
(which implements the same class, with a batch path, for real use).

Run: python examples/complete_example.py
"""

import asyncio

import numpy as np

from hierarchical_aggregation_protocol import HierarchicalStatisticalTree, BehavioralDistributedProtocol  # noqa: F401
from distributed_bayesian_consensus import StableBayesianConsensus  # noqa: F401
from statistical_cap_resolver import StatisticalCAPResolver, ConsistencyModel  # noqa: F401
from swarmguard import BehavioralData
from swarmguard import DistributedBehavioralDetector as LibraryDetector


# ---- the guide's code, as written ----------------------------------------------------
class DistributedBehavioralDetector:
    """Elena's behavioral detector with Marcus's distributed solutions"""
    
    def __init__(self):
        # Solution 1: O(n log n) aggregation
        self.tree = HierarchicalStatisticalTree(branching_factor=10)
        self.protocol = BehavioralDistributedProtocol(self.tree)
        
        # Solution 2: Stable Bayesian consensus
        self.consensus = StableBayesianConsensus(
            byzantine_threshold=0.33,
            partition_size=10000
        )
        
        # Solution 3: Statistical CAP resolver
        self.cap_resolver = StatisticalCAPResolver(
            consistency_model=ConsistencyModel.STATISTICAL,
            max_staleness_seconds=5.0
        )
    
    async def process_agent_behavior(self, agent_id, behavioral_data):
        """Your main processing loop - now scales to 1M+ agents"""
        
        # Step 1: Update hierarchical statistics (O(log n))
        anomaly_info = await self.protocol.update_agent_behavior(behavioral_data)
        
        # Step 2: Collect evidence if anomalous
        if anomaly_info['is_anomaly']:
            evidence = self.create_evidence(agent_id, behavioral_data, anomaly_info)
            await self.consensus.add_evidence(evidence)
        
        # Step 3: Distributed update with CAP resolution
        update = self.create_statistical_update(agent_id, behavioral_data)
        cap_result = await self.cap_resolver.handle_update(update)
        
        # Step 4: Make detection decision
        if self.should_trigger_response(anomaly_info, cap_result):
            return {
                'agent_id': agent_id,
                'action': 'isolate',
                'confidence': cap_result['confidence_factor'],
                'evidence': await self.consensus.distributed_evidence_consensus(agent_id)
            }
        
        return {'agent_id': agent_id, 'action': 'monitor'}
# ---- end of the guide's code ---------------------------------------------------------


# ---- the user's own helpers ---------------------------------------------------------
def _helper_state(self):
    if not hasattr(self, "_lib"):
        self._lib = LibraryDetector(require="anomaly")     # decisions on the anomaly test here
        self._lib.tree, self._lib.protocol = self.tree, self.protocol
        self._lib.consensus, self._lib.cap_resolver = self.consensus, self.cap_resolver
    return self._lib


def create_evidence(self, agent_id, behavioral_data, anomaly_info):
    return _helper_state(self).create_evidence(agent_id, behavioral_data, anomaly_info)


def create_statistical_update(self, agent_id, behavioral_data):
    return _helper_state(self).create_statistical_update(agent_id, behavioral_data)


def should_trigger_response(self, anomaly_info, cap_result):
    return _helper_state(self).should_trigger_response(anomaly_info, cap_result)


DistributedBehavioralDetector.create_evidence = create_evidence
DistributedBehavioralDetector.create_statistical_update = create_statistical_update
DistributedBehavioralDetector.should_trigger_response = should_trigger_response


async def main():
    detector = DistributedBehavioralDetector()
    rng = np.random.default_rng(3)
    isolated = []
    for i in range(3000):
        x = rng.normal(size=6)
        if i in (2500, 2900):
            x[1] += 25.0
        result = await detector.process_agent_behavior(i, BehavioralData(i, x, timestamp=float(i), region="eu"))
        if result["action"] == "isolate":
            isolated.append(i)
    print(f"isolated: {isolated}")
    return isolated


if __name__ == "__main__":
    asyncio.run(main())
