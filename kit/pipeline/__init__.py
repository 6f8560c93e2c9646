"""The streaming pipeline: normalise a source's items, split, sanitise, pump, coalesce, respond, frame as SSE.
Knows nothing of Flask, LangChain or notebooks; imports only kit.errors and itself."""
