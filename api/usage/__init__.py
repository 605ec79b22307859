"""/v1/usage: what an owner used and holds, and the caller key's quotas."""
