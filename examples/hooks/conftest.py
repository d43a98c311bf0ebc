# pytest registers these modules as plugins; stepkernel takes their step hooks.
pytest_plugins = ["retry_hooks", "webhook_hooks"]
