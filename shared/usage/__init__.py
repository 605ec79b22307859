"""Usage: what each owner's jobs used (a ledger the workers add to as they work), what they store, and the
per-key quotas checked against both."""
