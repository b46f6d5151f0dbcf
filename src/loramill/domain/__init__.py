"""What loramill is about, with no I/O: the job status machine, the records the store keeps, the storage
key layout and the ports the job store implements.

Every layer may import from here; nothing here imports from ``jobs``, ``adapters``, ``gateway`` or the
engine, so the adapters can depend on these types without depending on the worker or the gateway.
"""
