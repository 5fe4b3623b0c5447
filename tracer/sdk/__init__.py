"""The SDK: the code that runs inside a business service, on its hot path.

``Tracer`` (the public entry point), the client adapters (one module per client), the emitter
and its disk spool. Nothing here imports the analysis, the store's query side or the CLI.
"""
