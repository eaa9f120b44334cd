"""Experiments of the hyper-ribbon lens: joint embeddings of stored trajectories, the linear-model
theory against training, its phase diagram, and many deep networks on digits."""
