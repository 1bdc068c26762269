"""Backroom central: the head-office service (web API, ingestion, master data)."""
