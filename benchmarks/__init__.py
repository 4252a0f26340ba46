"""Speed benchmarks of gated_rnn against its peers (Flax linen, PyTorch); see bench.py."""
