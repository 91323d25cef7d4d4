"""What a user runs: the `granite-fms` command line, dataset runs, writers, evaluation, and
the OpenAI-compatible server (`server`, with its model worker `batching`)."""
