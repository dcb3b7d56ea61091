"""The sync: after the migration, pushing the device's changes to the cloud and pulling
the cloud's, and proving both sides hold the same items."""
