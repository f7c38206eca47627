"""``beagle serve``: an OpenAI-compatible HTTP server (chat/completions, completions, streaming)."""

from __future__ import annotations

import argparse
import os
import sys

from beagle.cli.common import add_draft_args, add_target_args
from beagle.errors import BeagleError



def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve an OpenAI-compatible HTTP API (speculatively with --draft)",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models and /health. Requests are "
                    "answered one at a time, in order; streaming uses server-sent events. Output is "
                    "identical to the target's own decoding (with --draft it is only faster).",
    )
    add_target_args(parser)
    add_draft_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on every request (default: $BEAGLE_API_KEY; "
                             "none = open)")
    parser.add_argument("--model-name", default=None,
                        help="model id clients send and /v1/models lists (default: derived from --target)")
    parser.add_argument("--max-tokens-limit", type=int, default=2048,
                        help="largest max_tokens a request may ask for; also the default (default 2048)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting or running before new ones get 503 (default 64)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="also accept requests whose Host header is NAME (repeatable; '*' = any). By default "
                             "only the bound address is accepted (localhost, 127.0.0.1 and [::1] when bound to "
                             "loopback), which stops DNS-rebinding web pages")
    parser.add_argument("--max-body-mib", type=float, default=4.0,
                        help="largest request body in MiB; larger ones get 413 (default 4)")
    parser.add_argument("--idle-timeout", type=float, default=15.0,
                        help="close a connection that sends no request for this many seconds, or stalls that long "
                             "mid-body (answered 408) (default 15)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default info)")
    parser.set_defaults(func=run)


def default_model_name(target: str) -> str:
    """'smollm2' -> 'smollm2'; '/models/Llama-3-8B/' -> 'Llama-3-8B'; 'org/name' hub ids stay as they are."""
    path = target.rstrip("/\\")
    if os.path.isdir(path):
        return os.path.basename(os.path.abspath(path)) or path
    return path


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise BeagleError(f"--port must be in 1..65535, got {args.port}")
    if args.max_tokens_limit < 1:
        raise BeagleError(f"--max-tokens-limit must be ≥ 1, got {args.max_tokens_limit}")
    if args.max_queue < 1:
        raise BeagleError(f"--max-queue must be ≥ 1, got {args.max_queue}")
    if not 0 < args.max_body_mib < 2**20 or args.max_body_mib * 2**20 < 1024:
        raise BeagleError(f"--max-body-mib must be at least 1 KiB (0.001) and finite, got {args.max_body_mib}")
    if not 0 < args.idle_timeout <= 86400:
        raise BeagleError(f"--idle-timeout must be in (0, 86400] seconds, got {args.idle_timeout}")
    _check_port_free(args.host, args.port)
    api_key = args.api_key or os.environ.get("BEAGLE_API_KEY") or None

    from beagle.cli.common import build_generator
    from beagle.serving.app import create_app
    from beagle.serving.guard import is_loopback
    from beagle.serving.server import graceful_server

    generator = build_generator(args)
    if generator.fast:
        warm_up_fast_path(generator, args.max_tokens_limit)
    model_name = args.model_name or default_model_name(args.target)
    max_body_bytes = int(args.max_body_mib * 2**20)
    app = create_app(generator, model_name, args.max_tokens_limit, api_key=api_key, max_queue=args.max_queue,
                     host=args.host, allowed_hosts=args.allowed_host, max_body_bytes=max_body_bytes,
                     body_timeout=args.idle_timeout)
    arch = getattr(getattr(generator.draft, "config", None), "arch", "draft")
    mode = f"{arch} draft {args.draft}" if args.draft else "plain decoding (no --draft)"
    print(f"serving {model_name!r} ({mode}) at http://{_url_host(args.host)}:{args.port}/v1", file=sys.stderr)
    print(f"  context {generator.target.max_length} tokens, max_tokens ≤ {args.max_tokens_limit}, "
          f"API key {'required' if api_key else 'not required'}, bodies ≤ {args.max_body_mib:g} MiB, "
          f"queue ≤ {args.max_queue}, idle timeout {args.idle_timeout:g} s", file=sys.stderr)
    if not is_loopback(args.host) and not api_key:
        print(f"warning: listening on {args.host} without an API key; anyone who can reach this port can use "
              "it (set --api-key or BEAGLE_API_KEY)", file=sys.stderr)
    graceful_server(app, args.host, args.port, log_level=args.log_level, idle_timeout=args.idle_timeout).run()
    return 0


def warm_up_fast_path(generator, max_tokens: int) -> None:
    """Before the port opens: size the fast path's caches for the whole context the server accepts (prompt +
    max_tokens up to the context limit) and pay every compilation and graph capture (greedy and sampling,
    rounds and the tail step) once, so no request waits for them."""
    longest_prompt = max(1, generator.target.max_length - max_tokens)
    print("warming up the fast path (compilation and CUDA-graph capture, once per process) ...", file=sys.stderr)
    generator.reserve(longest_prompt, max_tokens)
    print(f"  ready after {generator.warmup_seconds:.1f} s", file=sys.stderr)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise BeagleError(f"cannot resolve --host {host!r}: {error}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise BeagleError(f"cannot listen on {host}:{port} ({error.strerror}); pick another --port") from None
