"""Step programs that run inside the SageMaker containers (and, locally, as subprocesses).

They never import `pipeline` or `sagemaker`: see docs/container-contract.md.
"""
