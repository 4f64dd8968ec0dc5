"""Many engines as one: ``avbind serve`` spreads streams over Ray actors, each running one realtime
:class:`~avbind.realtime.engine.Engine`, behind one control endpoint and one published endpoint.

This layer sits above the engine and only drives it through its public methods (add, remove, list
streams); nothing in the engine knows it runs in a cluster. Ray is imported only by the driver
(``serve.py``) and only when ``avbind serve`` runs: ``pip install 'avbind[cluster]'``.

* ``placement.py``: which worker holds which stream (consistent hashing with bounded load);
* ``proxy.py``: the XSUB/XPUB proxy that subscribers connect to, which keeps each stream's
  ``seq`` and event ids continuous when a stream moves between workers;
* ``worker.py``: one engine worker (the Ray actor's body);
* ``control.py``: the JSON control protocol over ZeroMQ and its client;
* ``serve.py``: the driver: the Ray cluster, the workers, faults, and the CLI.
"""
