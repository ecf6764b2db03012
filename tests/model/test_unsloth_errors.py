"""The Unsloth backend's error paths in the main environment, where Unsloth is absent and transformers is newer than its pin."""

from importlib import metadata

import pytest

from mathgrpo.config import ConfigError, ModelConfig, load_config
from mathgrpo.model.common import ModelError


def _has_unsloth() -> bool:
    try:
        metadata.version("unsloth")
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(_has_unsloth(), reason="Unsloth is installed here: tests/model/test_unsloth_backend.py covers it")
def test_missing_unsloth_names_the_install_command():

    from mathgrpo.model.loading import load_base

    with pytest.raises(ModelError, match=r"pip install 'mathgrpo\[unsloth\]'.*model.backend=transformers"):
        load_base(ModelConfig(backend="unsloth", device="cpu"))


def test_version_conflict_names_package_and_pin():
    """A transformers newer than Unsloth's pin is named with the pin (checked against the installed version)."""
    from packaging.specifiers import SpecifierSet

    from mathgrpo.model import unsloth_backend

    pins = unsloth_backend.unsloth_pins()
    assert set(pins) == {"transformers", "trl", "datasets"}
    installed = metadata.version("transformers")
    conflicts = unsloth_backend.version_conflicts()
    if installed in SpecifierSet(pins["transformers"]):
        assert not any(c.startswith("transformers") for c in conflicts)
    else:
        assert f"transformers {installed} (unsloth needs transformers{pins['transformers']})" in conflicts


def test_unsloth_backend_refuses_full_finetune():
    with pytest.raises(ConfigError, match="model.backend=unsloth trains LoRA adapters only"):
        load_config("tiny-cpu", ["model.backend=unsloth"])  # the tiny recipe warms up every weight
    load_config("tiny-cpu", ["model.backend=unsloth", "sft.full_finetune=false"])
