"""Rollouts: plans of waves, the engine that walks each device through the transition table
(fleetdesk.inventory.rollout_states) and its journal."""
