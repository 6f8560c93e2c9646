"""The Flask app: `create_app`, request validation, origins, the stop route, the doctor's probe, the page and its
static files. May import kit.pipeline and kit.errors (and loads kit.adapters by name for a user's object)."""
