"""The other side of an agent's conversation: the Environment protocol (protocol.py) and the model-played
environment of role-swapped synthesis and multi-turn evaluation (simulated.py)."""
