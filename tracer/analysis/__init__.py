"""The analysis: what runs nightly or in an incident (reconcile, one-message judge, incident,
expected ids). Reads the store; never on a business service's hot path."""
