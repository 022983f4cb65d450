"""The gRPC service: servicers and the plumbing every RPC crosses (auth, TLS, metrics, logs).

Interceptors run in the order given to ``grpc.aio.server(interceptors=...)``, the first being
the outermost. Put the metrics interceptor before the auth interceptor, so that refused calls
are counted and logged with their status like any other.
"""
