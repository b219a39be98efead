"""Dataset validation with Great Expectations: echo_core measures facts, GX judges them.

The table handed to GX is FileList.csv (numeric columns parsed) plus, per row, the facts
`echo_core.data.facts` measures on the row's video (`video_exists`, `video_decodes`, `video_frames`,
`video_fps`, `video_height`, `video_width`, ...) and `file_name_safe` (from `safe_member`). One
ExpectationSuite per dataset kind says what a valid dataset is; a Checkpoint runs it and writes GX Data
Docs (HTML) every time.

- `rules.py`     the rule catalogue (GX-free `Rule`s per dataset kind)
- `gx.py`        the GX adapter: suite, checkpoints, Data Docs, result -> failures (the only GX importer)
- `report.py`    `Failure`, `ValidationReport`, the printed report, the quarantine list
- `validate.py`  `validate_dataset`: read -> facts -> judge -> report.json
"""

from pipelines.validation.report import Failure, ValidationReport, format_report, write_quarantine
from pipelines.validation.rules import build_rules, default_frame_size
from pipelines.validation.validate import default_output_dir, validate_dataset

__all__ = ["Failure", "ValidationReport", "build_rules", "default_frame_size", "default_output_dir",
           "format_report", "validate_dataset", "write_quarantine"]
