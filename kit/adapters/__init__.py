"""Source adapters: LangChain runnables and their events, LangGraph graphs, legacy callback chains, ready-made
chains. Each registers what it recognises with kit.pipeline.sources. May import kit.model, kit.pipeline."""
