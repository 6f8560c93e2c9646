"""The embedded model: settings, the batched llama.cpp engine, the kit's LangChain chat model, a plain source.
May import kit.pipeline and kit.errors."""
