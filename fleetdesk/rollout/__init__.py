"""Rollouts: plans of waves, the per-device transition table, the engine and its journal."""
