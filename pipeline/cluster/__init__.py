"""Scale-out on Dask distributed: many copy machines, one prep session; many import machines.

The scheduler is Dask's own (``dask scheduler``); ``pipeline worker`` is a Dask worker that
owns the drives attached to its machine (a worker resource) and runs the existing Trio
pipelines for the tasks given to it.  The rooms: ``shard`` (pure: walk order, the
partitioner, the shard's planner), ``plan`` (the session's cluster plan, a JSON file beside
the journals), ``worker`` (the worker process and its drives), ``remote`` and
``receive_remote`` (the tasks a worker runs: prep a shard; verify or import drives),
``site_remote`` (a site import of a job's drives on a worker, with its own site token),
``target`` (what of import's ``--to`` a task carries: the address, never the key),
``events`` (what those tasks share: the worker's drives and credentials, progress events),
``client`` (connecting, waiting, progress gathered from every worker), ``prep`` and ``receive``
(the commands' cluster halves).  Only ``pipeline.commands`` imports this package; it
imports prep/ and receive/.  See docs/SCALE.md.
"""
