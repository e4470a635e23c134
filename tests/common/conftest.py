"""The dispatcher's fixtures, for the schema-evolution tests that run it as a process here."""

from tests.dispatcher.conftest import dispatcher_factory  # noqa: F401  (re-exported fixture)
