"""The whole pipeline on one machine: a local stack, a Lambda-like SQS runner, the demo.

    python -m local up        moto (S3, SQS + DLQ, DynamoDB, Secrets Manager, CloudWatch)
                              and SeaweedFS as the MinIO stand-in, on free loopback ports
    python -m local run       Lambda's SQS event source mapping, emulated: batches, a
                              counting-down context, SIGKILL at the deadline, deletes acks
    python -m local demo      up, upload a realistic data set, run, verify, report, down
    python -m local down      stop everything recorded in the state file, also after a crash

Modules, each with one job:

    processes.py  liveness and killing by PID (the state file outlives the process that wrote it)
    stack.py      the state file, bringing the stack up and down, its environment
    resources.py  the AWS and MinIO resources the stack provisions
    sqs_event.py  ReceiveMessage output -> the SQS event Lambda hands to a function
    sandbox.py    one execution environment: a child process serving invocations
    worker.py     the child's side of sandbox.py (imports the handler once, like a warm container)
    runner.py     pollers, batching, invocation, deletion of acknowledged messages
    dataset.py    the demo's files: mixed sizes, spaces and Unicode in keys
    verify.py     reads every archive back and checks it against the sources
    moto_server.py  moto_server, with TransactWriteItems backing a table up once per call
    demo.py       the demo's flow and its report

This package is tooling for developers and CI. It is not shipped in the Lambda zip and may
use boto3 directly; the function's own code lives in ``aggregator/`` and ``handler.py``.
"""
