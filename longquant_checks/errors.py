"""Errors users see. Each names what was wrong and what is accepted or how to fix it."""


class LongquantError(Exception):
    """Base class for every error longquant-checks raises on bad input or a failed step."""


class UnknownValueError(LongquantError, ValueError):
    """A task, language, bucket or other name is not one we know."""

    def __init__(self, what: str, value: object, accepted: "list[str] | tuple[str, ...]"):
        self.what, self.value, self.accepted = what, value, tuple(accepted)
        super().__init__(f"unknown {what} {value!r}; accepted: {', '.join(map(str, accepted))}")


class SourceError(LongquantError, ValueError):
    """A user-supplied text source (corpus folder, QA file) is missing, empty or unreadable."""


class FetchError(LongquantError, RuntimeError):
    """Obtaining a model failed (download, extraction, conversion or checksum)."""


class UnsupportedError(LongquantError):
    """This recipe or checkpoint cannot run on this engine and hardware (the cell is "not gated", with the reason)."""


class EngineError(LongquantError, RuntimeError):
    """The inference engine failed to start or to generate."""


class SettingsError(LongquantError, ValueError):
    """An engine setting is unknown to the engine that would receive it."""
