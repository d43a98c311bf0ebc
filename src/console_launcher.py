"""`jupyter console --existing` whose Ctrl-C interrupts the running cell.

jupyter_console only interrupts kernels it started ("Cannot interrupt kernels
we didn't start"); a stepkernel session is always started elsewhere, but it
answers `interrupt_request` on the control channel, so send that instead.
"""

import sys

from jupyter_console.app import ZMQTerminalIPythonApp

_original = ZMQTerminalIPythonApp.handle_sigint


def _handle_sigint(self, *args):
    shell = getattr(self, "shell", None)
    if shell is not None and shell._executing and self.kernel_manager is None:
        client = self.kernel_client
        client.control_channel.send(client.session.msg("interrupt_request", {}))
        return
    return _original(self, *args)


ZMQTerminalIPythonApp.handle_sigint = _handle_sigint

if __name__ == "__main__":
    sys.argv[0] = "jupyter-console"
    ZMQTerminalIPythonApp.launch_instance()
