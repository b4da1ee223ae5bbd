"""The files service (content domain): users' files in the service's own bucket, metadata in its
own Postgres schema, bytes never on the bus. See :mod:`actors.files.contracts` for the protocol
and :mod:`actors.files.actor` (where ``greenroom run files`` finds it) for how it is kept. This
package imports nothing, so importing the contracts never loads the handlers.
"""
