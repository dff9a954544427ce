"""The roles an API key can have (what each may do: serving/auth.py)."""

ROLES = ("intake", "caseworker", "admin")
