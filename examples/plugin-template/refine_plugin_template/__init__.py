"""A template refine plugin. Copy this folder, rename the package, and edit `plugin.py`."""
