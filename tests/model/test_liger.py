"""Liger's failed-import warnings: the two optional implementations are silenced, nothing else."""

import logging

from mathgrpo.model.liger import FAILED_IMPORT, REGISTRY_LOGGER, quiet_optional_backends


def _warn(path: str) -> None:
    logging.getLogger(REGISTRY_LOGGER).warning(FAILED_IMPORT, path, "rope", "ImportError", "missing")


def test_only_the_optional_implementations_are_silenced(caplog):
    """Ascend and CuTe DSL lines are dropped; a failed Triton implementation and other warnings still show."""
    quiet_optional_backends()
    quiet_optional_backends()  # once per process, however often it is asked
    assert len(logging.getLogger(REGISTRY_LOGGER).filters) == 1
    with caplog.at_level(logging.WARNING, logger=REGISTRY_LOGGER):
        _warn("liger_kernel.ops.backends._ascend.rope")
        _warn("liger_kernel.ops.backends._cutedsl.rope")
        _warn("liger_kernel.ops.backends._triton.rope")
        logging.getLogger(REGISTRY_LOGGER).warning("_discover(%r): all declared paths imported but no @register_op ran", "rope")
    shown = [r.getMessage() for r in caplog.records]
    assert len(shown) == 2
    assert "_triton.rope" in shown[0] and "no @register_op ran" in shown[1]
