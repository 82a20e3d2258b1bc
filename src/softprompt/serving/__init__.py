"""``softprompt serve``: many prompt tasks on one backbone behind an HTTP API (FastAPI)."""
