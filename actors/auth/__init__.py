"""The auth service: tokens and signing keys (contracts in ``actors.auth.contracts``)."""
