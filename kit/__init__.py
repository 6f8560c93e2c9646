"""Stream LLM output into the Deep Chat web component from Flask, over Server-Sent Events."""

from kit.app import create_app
from kit.errors import ChatError, ServiceBusy
from kit.pump import CancelToken

__all__ = ["CancelToken", "ChatError", "ServiceBusy", "create_app"]
__version__ = "0.1.0"
