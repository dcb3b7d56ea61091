"""The migration: moving a device's store to the cloud once, resumably. The engine and
the run it carries through its steps, the journal and lock that make it crash-safe, the
dry-run plan, and the conflict phase."""
