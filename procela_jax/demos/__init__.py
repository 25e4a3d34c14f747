"""Built-in demo models."""

from . import amr as amr, growth as growth, sir as sir
