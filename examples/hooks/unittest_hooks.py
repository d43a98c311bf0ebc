"""The same hooks for `stepkernel run --runner unittest --hooks unittest_hooks`."""

from retry_hooks import stepkernel_step_error  # noqa: F401
from webhook_hooks import stepkernel_pause  # noqa: F401
