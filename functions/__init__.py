"""Transport only: HTTP (FastAPI), queue and timer functions. Parse, call a service, format."""
