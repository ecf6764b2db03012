"""Liger's noise, filtered: the two log lines about kernel implementations that cannot exist here.

On its first use of an op, Liger imports every implementation it knows of and logs a warning for
each one that does not import (`liger_kernel.backends.registry`, "Backend impl '<module>' for op
'<op>' could not be imported: ..."). Two of them can never import on our machines and say so at
every run: the Ascend NPU kernels and the CuTe DSL ones (an optional extra of Liger). Those two are
dropped; a failed import of any other implementation (the Triton kernels we use) still shows.
"""

from __future__ import annotations

import logging

REGISTRY_LOGGER = "liger_kernel.backends.registry"
FAILED_IMPORT = "Backend impl '%s' for op '%s' could not be imported: %s: %s"
OPTIONAL_IMPLS = ("liger_kernel.ops.backends._ascend.", "liger_kernel.ops.backends._cutedsl.")


class OptionalBackendFilter(logging.Filter):
    """Drops Liger's failed-import warning for the Ascend and CuTe DSL implementations only."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for that warning about an optional implementation; True for every other record."""
        if record.msg != FAILED_IMPORT or not record.args:
            return True
        return not str(record.args[0]).startswith(OPTIONAL_IMPLS)


def quiet_optional_backends() -> None:
    """Install the filter on Liger's registry logger, once per process."""
    logger = logging.getLogger(REGISTRY_LOGGER)
    if not any(isinstance(f, OptionalBackendFilter) for f in logger.filters):
        logger.addFilter(OptionalBackendFilter())
