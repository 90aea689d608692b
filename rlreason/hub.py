"""Publishing a run's `final/` folder to the Hugging Face Hub (`train.push_to_hub`).

Why the check comes first: an upload that fails after hours of training (no network, no
token, a malformed repo id) is the failure a user notices last and pays most for. So
`check_push` runs before the run folder is claimed and before any step: it validates
`train.hub_model_id`, refuses `HF_HUB_OFFLINE`, and asks the Hub who the token belongs to
(one small request). `push_final` then creates the repo if needed and uploads `final/`
(weights or adapter, tokenizer, the model card of model_card.py) in one commit, from the
main process only. huggingface_hub does the transfer: resumable, chunked, LFS-aware.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = ["check_push", "push_final"]

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def _api():
    from huggingface_hub import HfApi  # lazily: hub upload code, needed only with train.push_to_hub

    return HfApi()


def check_push(train_cfg: Any) -> None:
    """Raise a ValueError naming the field unless `final/` can be pushed where asked."""
    if not train_cfg.push_to_hub:
        return
    repo = train_cfg.hub_model_id
    if not repo:
        raise ValueError("train.hub_model_id: needed with train.push_to_hub, e.g. 'your-name/qwen-gsm8k-grpo'")
    if not REPO_ID.match(repo) or ".." in repo or repo.endswith((".git", ".")):
        raise ValueError(f"train.hub_model_id: {repo!r} is not a Hub repo id; expected 'owner/name' "
                         "(letters, digits, '-', '_', '.')")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ValueError("train.push_to_hub: HF_HUB_OFFLINE is set, so final/ could not be uploaded at the "
                         "end; unset it, or set train.push_to_hub false and upload final/ later "
                         "(`huggingface-cli upload REPO OUTPUT_DIR/final`). Nothing was trained.")
    try:
        who = _api().whoami()
    except Exception as e:  # noqa: BLE001 - offline, no token and a bad token all end here
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"train.push_to_hub: cannot reach the Hugging Face Hub with a token ({reason}); "
                         "log in (`huggingface-cli login` or HF_TOKEN) on a machine with network, or set "
                         "train.push_to_hub false. Nothing was trained.") from e
    owner = repo.split("/")[0]
    orgs = {o.get("name") for o in who.get("orgs", []) if isinstance(o, dict)}
    if owner != who.get("name") and owner not in orgs:
        raise ValueError(f"train.hub_model_id: {repo!r} is under {owner!r}, but the token belongs to "
                         f"{who.get('name')!r} (orgs: {sorted(o for o in orgs if o) or 'none'}). "
                         "Nothing was trained.")


def push_final(train_cfg: Any, folder: Path, *, step: int, log=print) -> str:
    """Create the repo (private when `train.hub_private`) if needed and upload `folder`."""
    api = _api()
    repo = train_cfg.hub_model_id
    api.create_repo(repo, private=train_cfg.hub_private, exist_ok=True)
    info = api.upload_folder(repo_id=repo, folder_path=str(folder),
                             commit_message=f"rlreason: {Path(train_cfg.output_dir).name} at step {step}")
    url = getattr(info, "commit_url", None) or repo
    log(f"pushed {folder} to the Hub: {url}")
    return url
