"""``fusionnet serve``: a local TF-Serving-compatible REST server."""

import sys

HELP = ("Serve an exported SavedModel over the TF Serving REST API "
        "(GET /v1/models/NAME, /metadata, POST :predict).")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "serve", help=HELP, description=HELP + (
            " Like tensorflow_model_server --model_base_path: the highest integer version in "
            "--model-base is served; other versions answer under /versions/N."))
    parser.add_argument("--model-base", required=True, metavar="DIR/NAME",
                        help="Model base folder holding integer version folders "
                             "(written by 'fusionnet export --format saved_model').")
    parser.add_argument("--model-name", default=None,
                        help="Name in the URLs (default: the model base folder's name).")
    parser.add_argument("--port", type=int, default=8501,
                        help="Port (default: 8501, TF Serving's REST port; 0 = any free port).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Interface to bind (default: 127.0.0.1, this machine only; "
                             "0.0.0.0 exposes the server to the network).")
    parser.add_argument("--max-request-mb", type=float, default=256.0,
                        help="Largest accepted request body in MiB (default: 256).")
    parser.add_argument("--log-requests", action="store_true",
                        help="Print one line per request to stderr (default: off).")
    parser.set_defaults(run=run)


def _stop_on_sigterm():
    """Treat SIGTERM (docker stop, kill) like Ctrl-C: shut down cleanly, exit 0."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run(args):
    from fusionnet_tf.export.server import ModelServer

    if args.max_request_mb <= 0:
        raise ValueError(f"--max-request-mb must be > 0; received {args.max_request_mb}")
    server = ModelServer(args.model_base, args.model_name, args.host, args.port,
                         int(args.max_request_mb * 1024 * 1024), args.log_requests)
    versions = ", ".join(str(v) for v in server.repository.versions)
    print(f"fusionnet serve: {server.url} (versions {versions}; serving "
          f"{server.repository.latest} by default). Ctrl-C stops.", file=sys.stderr, flush=True)
    _stop_on_sigterm()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0
