"""``python -m local up | down | status | env | run | event | demo`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from local import stack

DEFAULT_SAMPLE_KEY = "incoming/sample/sensor readings (1) é.json"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM takes the same way out as Ctrl-C: every `finally` runs, the stack goes down.
    raise KeyboardInterrupt


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env takes NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def _state(args: argparse.Namespace) -> stack.StackState:
    state = stack.StackState.load(args.state_dir)
    if state is None or not state.ready or not all(state.alive().values()):
        raise SystemExit(f"no running local stack in {args.state_dir}: `python -m local up` starts one")
    return state


def cmd_up(args: argparse.Namespace) -> int:
    state = stack.up(stack.StackConfig(function_timeout_s=args.function_timeout,
                                       visibility_timeout_s=args.visibility_timeout,
                                       max_receive_count=args.max_receive_count),
                     state_dir=args.state_dir, say=_say)
    _say(f"environment written to {Path(state.state_dir) / stack.ENV_FILE} (and env.json); in a shell:\n"
         f"  eval \"$(python -m local env)\"\n"
         f"serverless invoke local against this stack:\n"
         f"  python -m local event   # writes .local-stack/event.json from a real upload\n"
         f"  set -a; . {Path(state.state_dir) / stack.ENV_FILE}; set +a; "
         f"npx serverless invoke local -f aggregator --stage local -p .local-stack/event.json\n"
         f"stop it with: python -m local down")
    print(stack.export_lines(state))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if not stack.down(state_dir=args.state_dir, say=_say):
        _say(f"no local stack recorded in {args.state_dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    report = stack.status(state_dir=args.state_dir)
    if report is None:
        _say(f"no local stack recorded in {args.state_dir}")
        return 1
    print(json.dumps(report, indent=2))
    return 0 if all(p["running"] for p in report["processes"].values()) else 1


def cmd_env(args: argparse.Namespace) -> int:
    print(stack.export_lines(_state(args)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from local.runner import EventSourceRunner, MappingConfig, StopPolicy
    from local.sandbox import FunctionConfig

    state = _state(args)
    fn = state.function
    mapping = MappingConfig(
        queue_url=state.resources["queue_url"], queue_arn=state.resources["queue_arn"], region=state.region,
        batch_size=args.batch_size or fn["batch_size"],
        batching_window_s=fn["batching_window_s"] if args.batching_window is None else args.batching_window,
        report_batch_item_failures=fn["report_batch_item_failures"], poll_wait_s=args.poll_wait)
    function = FunctionConfig(handler=args.handler or fn["handler"], name=fn["name"],
                              timeout_s=args.timeout or fn["timeout_s"], memory_mb=fn["memory_mb"],
                              region=state.region, env={**state.env, **_env_pairs(args.env)}, task_root=args.task_root)
    log_path = Path(state.state_dir) / "function.log"
    runner = EventSourceRunner(state.aws_client("sqs", max_pool=args.concurrency + 4 if args.concurrency else 8),
                               mapping, function, concurrency=args.concurrency or fn["max_concurrency"],
                               stop=StopPolicy(idle_s=args.idle, max_s=args.max_time), log_path=log_path,
                               on_invocation=lambda r: _say(
                                   f"[poller {r.poller}] {r.invocation.outcome:7} {len(r.messages):4} messages, "
                                   f"{len(r.acked)} deleted, {len(r.failed)} left, "
                                   f"{r.invocation.duration_s:.2f} s" + (" (cold)" if r.invocation.cold_start else "")))
    _say(f"polling {mapping.queue_url} with {runner.concurrency} pollers (batch {mapping.batch_size}, "
         f"window {mapping.batching_window_s:g} s, timeout {function.timeout_s:g} s); function log: {log_path}")
    summary = runner.run()
    print(json.dumps({
        "stop_reason": summary.stop_reason, "invocations": dict(summary.outcomes),
        "messages_received": summary.messages_received, "messages_deleted": summary.messages_acked,
        "messages_left": summary.messages_failed,
        "metrics": {k: int(v) if float(v).is_integer() else v for k, v in summary.metrics.items()},
        "non_json_log_lines": summary.non_json_lines, "errors": summary.errors,
    }, indent=2))
    return 1 if summary.errors else 0


def cmd_event(args: argparse.Namespace) -> int:
    from local.sample_event import make_sample_event

    state = _state(args)
    out = args.out or Path(state.state_dir) / "event.json"
    body = json.dumps({"sensor": "dev-001", "reading": 21.5, "unit": "°C"}, ensure_ascii=False).encode()
    make_sample_event(state, key=args.key, body=body, out=out)
    _say(f"wrote {out} (the notification of s3://{state.resources['landing_bucket']}/{args.key}); invoke with:\n"
         f"  set -a; . {Path(state.state_dir) / stack.ENV_FILE}; set +a; "
         f"npx serverless invoke local -f aggregator --stage local -p {out}")
    print(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from local.demo import DemoOptions, run_demo

    options = DemoOptions(
        objects=args.objects, duplicates=args.duplicates, concurrency=args.concurrency, batch_size=args.batch_size,
        batching_window_s=args.batching_window, function_timeout_s=args.function_timeout, seed=args.seed,
        max_s=args.max_time, idle_s=args.idle, handler=args.handler, task_root=args.task_root,
        extra_env=_env_pairs(args.env),
        state_dir=args.state_dir, progress=not args.no_progress, keep=args.keep)
    result = run_demo(options)
    return 0 if result.ok else 1


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m local", description=__doc__)
    root.add_argument("--state-dir", type=Path, default=stack.DEFAULT_STATE_DIR,
                      help="where the state, env and function log files go (default: .local-stack/)")
    commands = root.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start moto + SeaweedFS and provision the local stage")
    up.add_argument("--function-timeout", type=int, help="seconds (default: serverless.yml's local stage)")
    up.add_argument("--visibility-timeout", type=int, help="seconds (default: the stage's, or 6x --function-timeout)")
    up.add_argument("--max-receive-count", type=int, help="receives before the DLQ (default: the stage's)")
    up.set_defaults(func=cmd_up)
    commands.add_parser("down", help="stop the recorded processes, also after a crash").set_defaults(func=cmd_down)
    commands.add_parser("status", help="processes, queue depths, archives").set_defaults(func=cmd_status)
    commands.add_parser("env", help="print `export` lines for the function's environment").set_defaults(func=cmd_env)

    def runner_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--concurrency", type=int, help="parallel pollers (default: maximumConcurrency)")
        command.add_argument("--batch-size", type=int, help="default: the stage's batchSize")
        command.add_argument("--batching-window", type=float, help="seconds (default: maximumBatchingWindow)")
        command.add_argument("--idle", type=float, default=10.0, help="stop once the queue is empty this long")
        command.add_argument("--max-time", type=float, default=900.0, help="stop after this many seconds")
        command.add_argument("--handler", help="module.function (default: serverless.yml's)")
        command.add_argument("--task-root", type=Path, default=stack.REPO_ROOT, help="where the handler module is")
        command.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                             help="add to the function's environment (repeatable), e.g. DEADLINE_RESERVE_MS=0")

    run = commands.add_parser("run", help="Lambda's SQS event source mapping against the running stack")
    runner_options(run)
    run.add_argument("--timeout", type=float, help="function timeout, seconds (default: the stack's)")
    run.add_argument("--poll-wait", type=int, default=20, help="ReceiveMessage WaitTimeSeconds (0-20)")
    run.set_defaults(func=cmd_run)

    event = commands.add_parser("event", help="upload one object and write its real SQS event for invoke local")
    event.add_argument("--key", default=DEFAULT_SAMPLE_KEY)
    event.add_argument("--out", type=Path, help="default: .local-stack/event.json")
    event.set_defaults(func=cmd_event)

    demo = commands.add_parser("demo", help="up, upload, run, verify, report, down")
    runner_options(demo)
    demo.set_defaults(idle=5.0)
    demo.add_argument("--objects", type=int, default=400)
    demo.add_argument("--duplicates", type=int, help="notifications re-sent (default: 5%% of --objects)")
    demo.add_argument("--function-timeout", type=int, help="seconds (default: the stage's)")
    demo.add_argument("--seed", type=int, default=20250614)
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except stack.StackError as e:
        _say(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
