"""The wire contract without pydantic: what the SDK reads and writes on a device where
pydantic-core has no wheel (Android, iOS). ``canonical`` holds the pure part (constants,
enums, encodings, checksums), ``models`` the light models generated from
:mod:`sdk.contract`, ``validate`` reads and writes them as pydantic would."""
