"""One exception type per phase. The CLI maps them to exit codes: 2 for spec/usage, 1 for run failures."""


class AllpairsError(Exception):
    """Base: the message is one line that says where, what and how to fix it."""

    exit_code = 1


class SpecError(AllpairsError):
    """pipeline.yaml is invalid (message names the file, line and YAML path)."""

    exit_code = 2


class UsageError(AllpairsError):
    """A command-line argument or --param override is invalid."""

    exit_code = 2


class CompileError(AllpairsError):
    """The spec is valid but cannot be turned into a pipeline definition."""

    exit_code = 2


class LocalRunError(AllpairsError):
    """A local execution failed (message names the step, host and reason)."""


class ArtifactReadError(AllpairsError):
    """An artifact cannot be read (message names the file and the fix)."""


class AwsError(AllpairsError):
    """A call to AWS failed (message names the cause and the fix)."""


class DefinitionError(AllpairsError):
    """The definition holds something the local runner (or validate) cannot interpret: a bug in compile.py or in
    pipeline/definition, never the user's."""
