"""train.push_to_hub: checked before anything is trained or written; at the end final/ (with
its model card) is uploaded in one commit to the named repo. The Hub is replaced by a
recording fake (no machine here reaches it); the offline failure is also met for real."""
from __future__ import annotations

import pytest

from rlreason import hub
from rlreason.sft import train_sft
from rlreason.trainer import train


class FakeHub:
    def __init__(self, user="alice", orgs=("lab",)):
        self.user, self.orgs, self.calls = user, orgs, []

    def whoami(self):
        return {"name": self.user, "orgs": [{"name": o} for o in self.orgs]}

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message):
        from pathlib import Path

        files = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(("upload_folder", repo_id, files, commit_message))


@pytest.fixture
def fake_hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # conftest sets it for the whole session
    monkeypatch.setattr(hub, "_api", lambda: fake)
    return fake


def _nothing_written(tmp_path):
    out = tmp_path / "run"
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("overrides, message", [
    (["train.push_to_hub=true"], r"train.hub_model_id: needed with train.push_to_hub"),
    (["train.push_to_hub=true", "train.hub_model_id=no-slash"], r"'no-slash' is not a Hub repo id"),
    (["train.push_to_hub=true", "train.hub_model_id=bob/model"],
     r"'bob/model' is under 'bob', but the token belongs to 'alice'"),
])
def test_a_push_that_cannot_happen_stops_before_training(tiny_recipe, tmp_path, fake_hub, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_recipe(*overrides), log=lambda s: None)
    assert _nothing_written(tmp_path) and fake_hub.calls == []


def test_offline_fails_first_with_the_way_out(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"HF_HUB_OFFLINE is set.*push_to_hub false.*Nothing was trained"):
        train(tiny_recipe("train.push_to_hub=true", "train.hub_model_id=alice/m"), log=lambda s: None)
    assert _nothing_written(tmp_path)


def test_no_network_is_met_for_real_before_training(tiny_recipe, tmp_path, monkeypatch):
    # this machine reaches no hub: the real client's failure becomes the field's message
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "3")
    with pytest.raises(ValueError, match=r"train.push_to_hub: cannot reach the Hugging Face Hub"):
        train(tiny_recipe("train.push_to_hub=true", "train.hub_model_id=alice/m"), log=lambda s: None)
    assert _nothing_written(tmp_path)


def test_final_folder_with_its_card_is_pushed_at_the_end(tiny_recipe, tmp_path, fake_hub):
    train(tiny_recipe("train.max_steps=2", "train.push_to_hub=true", "train.hub_model_id=lab/tiny-grpo"),
          log=lambda s: None)
    create, upload = fake_hub.calls
    assert create == ("create_repo", "lab/tiny-grpo", True, True)  # private unless hub_private false
    _, repo, files, message = upload
    assert repo == "lab/tiny-grpo" and "README.md" in files and "config.json" in files
    assert "model.safetensors" in files and message.endswith("at step 2")
    assert (tmp_path / "run" / "final" / "README.md").is_file()


def test_sft_pushes_too_and_writes_a_card(tiny_recipe, tmp_path, fake_hub):
    train_sft(tiny_recipe("train.max_steps=2", "train.push_to_hub=true", "train.hub_model_id=alice/tiny-sft",
                          "train.hub_private=false"), log=lambda s: None)
    (create, upload) = fake_hub.calls
    assert create[2] is False and upload[1] == "alice/tiny-sft" and "README.md" in upload[2]
