"""What a user runs: the `granite-fms` command line, dataset runs, writers, evaluation."""
