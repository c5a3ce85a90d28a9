"""Pretext tasks: the registry (`study.tasks.registry`) and every registered task (numpy only).

Importing this package (or any module in it) registers every task: the modules that define tasks are
imported here, in registration order, which is the display order of tables and figures and the order of the
task-parameter columns of results.csv. A new task module is added at the end of this list.
"""

# The order is the registration order, not alphabetical (an import sorter must leave it).
from study.tasks import paper  # noqa: F401, I001  the paper's four tasks
from study.tasks import contrastive  # noqa: F401  simclr, byol
