"""Whether a hub repo can be had here: the local caches, HF_HUB_OFFLINE, and a hub that does not answer."""

import os
import subprocess
import sys

from huggingface_hub import constants

from mathgrpo.hubcheck import hub_status


def test_a_repo_in_the_hub_cache_is_found_without_asking_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "models--owner--cached").mkdir()
    assert hub_status("owner/cached", "model") == ("local hub cache", None)
    found, problem = hub_status("owner/absent", "model", "rewards.model")
    assert found is None
    assert "HF_HUB_OFFLINE=1" in problem and "huggingface-cli download owner/absent" in problem
    assert "set rewards.model to a local folder" in problem
    found, problem = hub_status("owner/absent", "dataset")
    assert found is None and "MATHGRPO_HUB_ROOT/owner/absent" in problem


def test_a_hub_that_does_not_answer_is_a_problem_not_a_wait(tmp_path):
    """A hub endpoint that refuses connections: one line that says so and what to do (the hub client's loaders
    would retry for most of a minute)."""
    code = "from mathgrpo.hubcheck import hub_status; print(hub_status('owner/absent', 'model'))"
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "(None, 'not in the local hub cache and the hub did not answer (" in out
    assert "huggingface-cli download owner/absent" in out
