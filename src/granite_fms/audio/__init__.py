"""Audio in, model inputs out: waveforms and features, prompts, long-form windows."""
