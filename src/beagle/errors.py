"""User-facing errors. The CLI prints these as one line (no traceback) and exits with status 2."""


class BeagleError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class IncompatibleDraftError(BeagleError):
    """A draft checkpoint was trained for a different target."""


class DataError(BeagleError):
    """Malformed or missing training / prompt data."""


class FetchError(BeagleError):
    """A pinned asset could not be fetched or failed its checksum."""


class PromptTooLongError(BeagleError):
    """A prompt has more tokens than the caller allows (``tokens`` is exact, or a lower bound when
    ``exact`` is False: the rest of the prompt was not tokenized)."""

    def __init__(self, tokens: int, limit: int, exact: bool = True):
        self.tokens = tokens
        self.limit = limit
        self.exact = exact
        count = f"{tokens} tokens" if exact else f"more than {tokens} tokens"
        super().__init__(f"the prompt has {count}; at most {limit} fit")
