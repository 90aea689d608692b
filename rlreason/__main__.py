"""`python -m rlreason ...` (what `accelerate launch -m rlreason` runs)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
