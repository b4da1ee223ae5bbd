"""The users service: each user's own profile, cached in Redis.

Other services and the edge import only :mod:`actors.users.contracts`. The actor lives in
:mod:`actors.users.actor`, where ``greenroom run users`` finds it; this package imports nothing,
so importing the contracts never loads the handlers.
"""
