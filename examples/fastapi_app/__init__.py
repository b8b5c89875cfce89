"""A chat app on FastAPI with chatstate: streamed turns, a tool, history per session."""
