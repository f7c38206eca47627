"""User-facing errors. The CLI prints these as one line (no traceback) and exits with status 2."""


class BeagleError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class IncompatibleDraftError(BeagleError):
    """A draft checkpoint was trained for a different target."""


class DataError(BeagleError):
    """Malformed or missing training / prompt data."""


class FetchError(BeagleError):
    """A pinned asset could not be fetched or failed its checksum."""
