"""Serving: werkzeug in a thread, gunicorn, the engine process and its launcher, the demo apps, `kit doctor` and the
SSE client. May import kit.web, kit.adapters, kit.model, kit.testing (the demo's scripted text), kit.pipeline and
kit.errors; nothing imports kit.__main__."""
