"""Job handlers by kind: each takes a JobContext and returns the job's result dict."""

from workers.jobs.inspect import inspect_upload
from workers.protocol import JobKind

HANDLERS = {JobKind.INSPECT: inspect_upload}
