"""Root conftest: plugins shared by the whole test suite (pytest reads pytest_plugins only here)."""

pytest_plugins = ["tests.azurite"]  # the session fixture `azurite` (Azure Blob emulator)
