"""The store: the device's local SQLite file of items, how to tell what a file is
(detection), the change log that sync reads, the snapshot a migration sends, and the
import of a legacy database into a store."""
