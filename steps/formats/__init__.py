"""The on-disk formats the steps hand each other, one module each, its writer and its reader together:
normalized (Preprocess -> Similarity, Merge), shards (Similarity -> Merge), checkpoints (Similarity -> a
restarted Similarity), artifact (Merge -> Register and users). Names and versions: steps/contract.py."""
