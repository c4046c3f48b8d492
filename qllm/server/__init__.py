"""`qllm-serve`: a QLLM engine behind an OpenAI-compatible HTTP API (DESIGN.md, "Serving and
remote engines"). One background thread steps the engine (engine_loop); FastAPI handlers submit
requests to it and read their tokens back (streams); see app.py for the routes."""
