"""One invocation's work: claim -> fetch -> archive -> publish.

Everything the batch names goes into ONE archive. The order of steps is what makes each
object land in exactly one archive even when the invocation dies anywhere:

1. parse every message; a malformed one fails alone; an event older than the claim TTL
   is refused (``StaleEvents``);
2. claim every object: one conditional write each, naming the planned archive key and a
   lease until our deadline plus the grace; live claims of others are retried later;
3. claims of dead invocations are decided from their archive's manifest (``recovery``):
   listed there, a duplicate; not, taken over;
4. fetch the claimed objects, pinned to their versions, into one archive in a spool
   (``assemble``); release the claims of objects left out, before the upload, so every
   claim still naming the archive key is really in it;
5. publish the archive atomically, manifest sidecar first (``aggregator.delivery``), and
   act on its outcome: published (done, nothing more is written), not published (release),
   unknown (keep the claims until the lease ends; the next delivery's recovery decides).

The batch (``batch.Batch``) owns its held claims, its deadline and its outcome.
"""

from aggregator.pipeline.assemble import archive_size_bound
from aggregator.pipeline.batch import BatchReport, Dependencies, Message, Target, new_owner, run_batch

__all__ = ["BatchReport", "Dependencies", "Message", "Target", "archive_size_bound", "new_owner", "run_batch"]
