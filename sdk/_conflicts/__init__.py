"""Conflicts: how an item that differs on the device and in the cloud is decided (the
policy per collection, merge functions, the clock estimate)."""
