"""Every component id of the dashboard, in one place (pages and tests import them from here).

Example::

    from dashboards import ids
    dash_duo.find_element(f"#{ids.PROBE_HEATMAP}")
"""

from __future__ import annotations

# shell (every page)
STATE = (
    "app-state"  # dcc.Store: {"run", "attribute", "stream", "site", "step", "direction", "sample"}; identifiers only
)
SAMPLE = "app-sample"  # dcc.Store: {"run", "sample"}: the sample picked in /latents (the editor's default source)
URL = "app-url"  # dcc.Location used to navigate from callbacks
RUN_SELECT = "app-run-select"
NAV = "app-nav"
SHELL_MESSAGE = "app-message"

# / (runs)
RUNS_TABLE = "runs-table"
RUNS_MESSAGE = "runs-message"
RUNS_DETAIL = "runs-detail"

# /probes
PROBE_ATTRIBUTE = "probes-attribute"
PROBE_STREAM = "probes-stream"
PROBE_METRIC = "probes-metric"
PROBE_HEATMAP = "probes-heatmap"
PROBE_MESSAGE = "probes-message"
PROBE_BEST = "probes-best"

# /latents
LAT_SITE = "latents-site"
LAT_STEP = "latents-step"
LAT_METHOD = "latents-method"
LAT_COLOR = "latents-color"
LAT_SCATTER = "latents-scatter"
LAT_TOOLTIP = "latents-tooltip"
LAT_SELECTION = "latents-selection"
LAT_MESSAGE = "latents-message"
LAT_TITLE = "latents-title"
LAT_RELAYOUT = "latents-relayout"  # dcc.Store: the last relayoutData that changed an axis range
LAT_VIEW = "latents-view"  # dcc.Store: {"key": cell, "x": [lo, hi] | None, "y": ...} the scatter's current view

# /attention
ATT_SAMPLE = "attention-sample"
ATT_TOKEN = "attention-token"
ATT_BLOCK = "attention-block"
ATT_STEP = "attention-step"
ATT_STEP_BOX = "attention-step-box"  # number box beside the step slider (kept in sync with it)
ATT_AGGREGATE = "attention-aggregate"
ATT_FIGURE = "attention-figure"
ATT_STRIP = "attention-strip"
ATT_MESSAGE = "attention-message"
ATT_PROMPT = "attention-prompt"
ATT_CONCEPTS = "attention-concepts"
ATT_CONCEPT_RUN = "attention-concept-run"
ATT_CONCEPT_KIND = "attention-concept-kind"
ATT_CONCEPT_STORE = "attention-concept-store"
ATT_CONCEPT_STRIP = "attention-concept-strip"
ATT_CONCEPT_STATUS = "attention-concept-status"

# /directions
DIR_TABLE = "directions-table"
DIR_SELECT = "directions-select"
DIR_COSINE = "directions-cosine"
DIR_COSINE_SITE = "directions-cosine-site"  # which (site, stream[, token-wise]) group the cosine matrix compares
DIR_HIST = "directions-hist"
DIR_SEND = "directions-send"
DIR_MESSAGE = "directions-message"
DIR_PROVENANCE = "directions-provenance"

# /editor
ED_SOURCE_KIND = "editor-source-kind"
ED_SAMPLE = "editor-sample"
ED_UPLOAD = "editor-upload"
ED_UPLOAD_INFO = "editor-upload-info"
ED_MODE = "editor-mode"
ED_DIRECTION = "editor-direction"
ED_TARGET = "editor-target"
ED_ALPHA = "editor-alpha"
ED_SWEEP = "editor-sweep"
ED_STEPS = "editor-steps"
ED_RUN = "editor-run"
ED_CANCEL = "editor-cancel"
ED_BUSY_POLL = "editor-busy-poll"  # dcc.Interval, on only while the server is at its job cap
ED_PROGRESS = "editor-progress"
ED_STATUS = "editor-status"
ED_RESULT = "editor-result"
ED_MESSAGE = "editor-message"
ED_UPLOAD_STORE = "editor-upload-store"  # {"upload": id} of the validated upload
ED_RESULT_STORE = "editor-result-store"  # image ids + metrics of the last edit (JSON only)

# /features
FEAT_SITE = "features-site"
FEAT_SORT = "features-sort"
FEAT_SELECT = "features-select"
FEAT_SEND = "features-send"
FEAT_SUMMARY = "features-summary"
FEAT_TABLE = "features-table"
FEAT_DETAIL = "features-detail"
FEAT_MESSAGE = "features-message"
# /causal
CAUSAL_GRID = "causal-grid"
CAUSAL_STREAM = "causal-stream"
CAUSAL_VALUE = "causal-value"
CAUSAL_PATCH = "causal-patch-heatmap"
CAUSAL_PROBE = "causal-probe-heatmap"
CAUSAL_IMAGES = "causal-images"
CAUSAL_MESSAGE = "causal-message"
ED_SOURCE_PREVIEW = "editor-source-preview"  # the source image and its prompt, before any edit
ED_SAMPLE_BOX = "editor-sample-box"  # wrappers hidden when their control does not apply
ED_UPLOAD_BOX = "editor-upload-box"
ED_DIRECTION_BOX = "editor-direction-box"
ED_TARGET_BOX = "editor-target-box"
