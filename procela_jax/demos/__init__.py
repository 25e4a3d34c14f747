"""Built-in demo models."""

from . import sir as sir
