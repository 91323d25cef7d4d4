"""Generation: bucketed shapes, a static KV cache, greedy and beam search, compiled regions."""
