"""allpairs: pipeline.yaml -> SageMaker pipeline definition -> cloud (aws.py) or this machine (local.py)."""
