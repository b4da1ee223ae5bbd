"""The auth service: accounts, sessions, roles and token signing keys.

Other services and the edge import only :mod:`actors.auth.contracts`. The actor lives in
:mod:`actors.auth.actor`, where ``greenroom run auth`` finds it; this package imports nothing,
so importing the contracts never loads the handlers.
"""
