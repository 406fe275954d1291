"""User-facing errors raised by the serving runtimes (one line each)."""

from __future__ import annotations

from search.core.errors import NasdeployError


class ServeError(NasdeployError):
    """A model, backend or request problem the user can fix; the message is one line."""


class ImageError(ServeError):
    """The input is not a decodable image (empty, truncated, wrong format)."""


class ImageTooLargeError(ImageError):
    """The image decodes to more pixels than the configured limit."""


class ModelOutputError(ServeError):
    """The model's scores are unusable: NaN or infinite, or not one per class of its card."""
