"""nbtrack's own errors. No IPython here: the magics turn these into ``UsageError``."""


class NbtrackError(Exception):
    """Base of every error nbtrack raises on purpose; its message is meant for the user."""


class BadOptionError(NbtrackError):
    """A ``%%track`` / ``%track_config`` option or a CLI argument is malformed."""


class StoreError(NbtrackError):
    """The MLflow store could not be read or written."""


class NotebookError(NbtrackError):
    """A notebook given to nbtrack is missing, unreadable or not what the command needs."""


class PermissionDeniedError(StoreError):
    """The tracking server refused an operation: the logged-in user lacks the permission."""


class RunOpenedPartlyError(StoreError):
    """A run was created, but what follows its creation (its first params, making it MLflow's
    active run) failed. ``run_id`` names the run, so its record goes into it instead of a new one
    that would leave this one behind, RUNNING and empty.
    """

    def __init__(self, run_id: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.run_id = run_id
