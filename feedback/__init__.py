"""Feedback: the DuckDB store of conversations, ratings, corrections, votes, adapters and runs."""
