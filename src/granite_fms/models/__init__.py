"""FMS architectures: each file a config, its modules, the model, variants, registration and
its Hugging Face adapter."""
