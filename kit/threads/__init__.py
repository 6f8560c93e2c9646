"""Conversations as threads: thread ids, the per-thread transcript and owner store (SQLite or PostgreSQL), stop
requests shared by worker processes, and the thread a request runs on. May import kit.errors and kit.pipeline."""
