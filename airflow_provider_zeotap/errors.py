"""Errors that are about the provider's own rules rather than about HTTP.

The HTTP core's ``ApiError`` family builds on ``ZeotapProviderError``; the sync engine raises the
configuration and state errors below and never needs to know that HTTP exists.
"""

from __future__ import annotations


class ZeotapProviderError(Exception):
    """Base class of every error this provider raises on purpose."""


class ConfigurationError(ZeotapProviderError, ValueError):
    """A setting is wrong; the message names the setting and the fix. Nothing was sent."""


class FatalError(ZeotapProviderError):
    """No row-level retry can fix this (a bad key, no permission): delivery stops at once.

    What was acknowledged before it is still committed, so nothing is sent twice.
    """


class StaleBaseError(ZeotapProviderError):
    """Another run committed since this plan was computed; sending or committing it would undo that run."""


class BindingError(ConfigurationError):
    """The committed baseline was delivered to another target than the one this task writes to."""


class GuardError(ConfigurationError):
    """A guard (``max_removals``, ``max_removal_ratio``, ``allow_empty_source``) refused the run before any write."""
