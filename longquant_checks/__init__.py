"""longquant-checks: gate quantized LLM checkpoints on long inputs, per task x length bucket x language.

The public API is re-exported here; modules behind it are private and may change.
"""

from .checkpoints.demo import demo_model_path
from .errors import LongquantError, SourceError, UnknownValueError
from .plan import PlannedCell, plan_cells
from .samples import load_or_generate
from .schema import BUCKETS, Cell, Sample, bucket_label, parse_bucket
from .tasks.base import Task, TextSources, get_task, register_task, task_names
from .text.languages import LANGUAGES, Language, load_language
from .text.tokens import PromptTokenizer

__version__ = "0.1.0"
__all__ = [
    "BUCKETS", "Cell", "LANGUAGES", "Language", "LongquantError", "PlannedCell", "PromptTokenizer", "Sample",
    "SourceError", "Task", "TextSources", "UnknownValueError", "bucket_label", "demo_model_path", "get_task",
    "load_language", "load_or_generate", "parse_bucket", "plan_cells", "register_task", "task_names",
]
