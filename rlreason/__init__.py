"""rlreason: reinforcement fine-tuning of LLMs on reasoning tasks with verifiable rewards."""

__version__ = "0.1.0"
