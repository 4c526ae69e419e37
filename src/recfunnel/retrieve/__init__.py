"""Candidate generators (batched over requests) and pool fusion."""
