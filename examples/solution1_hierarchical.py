"""The guide's Solution 1, as written, with the user's own helpers defined around it.

Run: python examples/solution1_hierarchical.py
"""

import asyncio

import numpy as np

from swarmguard import BehavioralData

# ---- the user's own helpers (not part of the guide's code) -------------------------
rng = np.random.default_rng(0)
found = []


def your_agent_iterator():
    for i in range(5000):
        x = rng.normal(size=10)
        if i in (3000, 4200):
            x[3] += 30.0                       # two agents that misbehave
        yield i, BehavioralData(agent_id=i, features=x)


def handle_anomaly(agent_id, anomaly_info):
    found.append(agent_id)
    print(f"anomaly: agent {agent_id}, distance {anomaly_info['mahalanobis_distance']:.1f}, "
          f"p = {anomaly_info['p_value']:.2e}")


async def main():
    # ---- the guide's code, as written ------------------------------------------------
    from hierarchical_aggregation_protocol import HierarchicalStatisticalTree, BehavioralDistributedProtocol

    # Initialize with your parameters
    tree = HierarchicalStatisticalTree(
        branching_factor=10,  # Optimal for 1M agents
        feature_dimensions=10  # Your behavioral features
    )

    protocol = BehavioralDistributedProtocol(tree)

    # Your existing agent loop becomes:
    for agent_id, behavioral_data in your_agent_iterator():
        # O(log n) update instead of O(n²)
        anomaly_info = await protocol.update_agent_behavior(behavioral_data)

        if anomaly_info['is_anomaly']:
            # Trigger your existing response
            handle_anomaly(agent_id, anomaly_info)

    # Get global statistics instantly
    global_stats = tree.get_global_statistics()
    # ---- end of the guide's code -----------------------------------------------------
    print(f"population: {global_stats['count']} agents; found {found}")
    return global_stats


if __name__ == "__main__":
    asyncio.run(main())
