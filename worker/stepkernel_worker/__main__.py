"""``python -m stepkernel_worker``: started by the stepkernel kernel, never by hand."""

from .worker import main

main()
