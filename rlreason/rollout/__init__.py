"""Rollout engines (transformers, vLLM, a remote server) behind one contract (engine.py), and
guided exploration (guidance.py). Imports nothing of the loops or evaluation; of models only what pushes
LoRA adapters to an engine."""
