"""The import service: job catalog, Azure-compatible REST API, and their rules.

Never touches drives: the receiving side's link to a job (pipeline/receive/service_import.py)
lives outside.  Imports point one way, as in the rest of pipeline::

    service.py  ASGI app (Starlette) served by Hypercorn's trio worker; routes, auth, HTTP codes
    auth.py     subscriptions' publish settings files, Ed25519-signed bearer tokens (JWT)
    catalog.py  SQLite catalog (WAL, 0600): the public, synchronous, thread-safe API
    model.py    ARM JSON <-> frozen Job/Drive values; PUT and PATCH bodies through the rules
    rules.py    names, drive cap, carriers, the job and drive state machines (one table each)
    regions.py  data-center locations: regions.json, copied into the data directory
    errors.py   ApiError family: HTTP status + ARM error code + one-line message
    client.py   the REST client: `pipeline jobs` and the receiving side's `import --service`
    portal/     the customer web portal (Jinja pages, sessions, the create-job wizard)

model, rules and errors are pure (no I/O).
"""
