"""Built-in demo models."""

from . import amr as amr, sir as sir
