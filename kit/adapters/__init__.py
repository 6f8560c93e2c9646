"""Source adapters: LangChain runnables and their events, LangGraph graphs, legacy callback chains, ready-made
chains, and the one registry (`adapt`) that the web app asks. May import kit.model, kit.pipeline."""

from kit.adapters.registry import SOURCE_KINDS, adapt

__all__ = ["SOURCE_KINDS", "adapt"]
