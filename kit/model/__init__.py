"""The embedded model: settings, the batched llama.cpp engine, the kit's LangChain chat model, a plain source, and
the client that gives a server's model (the engine process, vLLM, llama-server) the engine's face (remote).
May import kit.pipeline and kit.errors."""
