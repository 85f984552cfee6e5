"""The synthetic world the tiny and smoke scales run on."""
