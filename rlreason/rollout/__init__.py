"""Rollout engines (transformers, vLLM, a remote server) behind one contract (engine.py), and
guided exploration (guidance.py). Imports nothing of the loops, models or evaluation."""
