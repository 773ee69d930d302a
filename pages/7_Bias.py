"""Social bias (the paper's Table 2): StereoSet LMS, SS and ICAT per sentence type and bias type, base versus
compressed, with n and 95% intervals."""

import pandas as pd
import streamlit as st

from sfsd.dashboard import data, headlines, plots, widgets
from sfsd.errors import SfsdError
from sfsd.evaluate.stereoset import BOOTSTRAP_RESAMPLES, MIN_N, REPORT_TYPES, display_table, thin_cells
from sfsd.runs.readonly import readonly

top = widgets.page_setup("Bias: StereoSet", "LMS: how often a meaningful sentence beats an unrelated one (higher "
                         "is better). SS: how often the stereotype beats the anti-stereotype (50 is unbiased). ICAT = "
                         "LMS · min(SS, 100 - SS) / 50 (100 is ideal).")

models = data.model_choices()
compressed = [m for m in models if data.compressed_method(m)]
if not compressed:
    st.info("No compressed model yet: run Table 1's protocol on the **Weight vs feature** page (its models are "
            "listed here), save a finished search run's model on the **Disagreement** page (or the Runs page), "
            "or run `sfsd compress --model smollm2-135m --method feature --beta 0.46 "
            "--last-blocks 12 --out cache/models/demo-feature`. The base model can be scored meanwhile.")
default = [data.demo_model(), *compressed[:2]]
# the models on a row of their own: beside the examples input, a Table 1 model's name was cut at 1000 px
chosen = st.multiselect("Models", models, default=[m for m in dict.fromkeys(default) if m in models], key="bias-models",
                        format_func=data.model_display)
widgets.broken_model_warnings(chosen)
per_cell = st.columns([1, 3])[0].number_input(
    "Examples per domain and sentence type", 1, 1000, MIN_N, key="bias-per-cell",
    help="a seeded random sample of every (sentence type, domain) cell of StereoSet's 4,229 rows, so that every "
         "domain is scored (religion is 2% of the rows: the first N rows may hold none); a cell with fewer rows "
         "is scored whole. 3 sentences are scored per example")
key = (tuple(chosen), int(per_cell))
results = st.session_state.setdefault("bias-results", {})
if not readonly() and st.button("Score", key="bias-run", type="primary", disabled=not chosen,
                                icon=":material/balance:"):
    with st.spinner(f"Scoring {len(chosen)} model(s) on up to {int(per_cell)} StereoSet examples per cell..."):
        try:
            widgets.save_table1_models(chosen)
            frames = [data.bias_summary(model, int(per_cell)).assign(model=data.model_display(model))
                      for model in chosen]
            results[key] = pd.concat(frames, ignore_index=True)
        except (SfsdError, OSError, ValueError) as exc:
            st.error(f"Scoring failed: {exc}")
if key not in results:
    st.info("Read-only mode: scores are not computed here (they take minutes and write the evaluation cache); "
            "use a full dashboard or `sfsd bias`." if readonly() else
            "Press **Score** to compute LMS, SS and ICAT (results are cached: a second time is instant).")
    st.stop()

summary = results[key]
colors = {data.model_display(m): plots.method_color(data.compressed_method(m) or "base") for m in chosen}
if len(set(colors.values())) < len(colors):  # two models of one method: tell them apart
    colors = {}
kind = st.radio("Sentence type", REPORT_TYPES, index=REPORT_TYPES.index("intrasentence"), horizontal=True,
                key="bias-type", format_func=lambda t: "all (both pooled)" if t == "all" else t,
                help="intrasentence by default: the only type comparable with published numbers (intersentence is "
                     "scored by likelihood here, not by a next-sentence head; docs/evaluation.md). The official "
                     "evaluation reports the two separately and pools them only for its overall score")
part = summary[summary["type"] == kind]
widgets.headline(top, headlines.bias_headline(part, kind))
notes = thin_cells(part)
if notes:
    st.warning("Read with care: " + "; ".join(notes) + ".", icon=":material/warning:")
st.caption(f"[low, high]: 95% percentile bootstrap over examples ({BOOTSTRAP_RESAMPLES} resamples, seeded); "
           f"n: examples in the cell; fewer than {MIN_N} are flagged above. SS and LMS are means over target terms "
           "as in the official script.")
widgets.table(display_table(part, digits=2), "stereoset", key="bias-table")
metric = st.radio("Metric", list(plots.BIAS_METRICS), index=list(plots.BIAS_METRICS).index("ICAT"), horizontal=True,
                  key="bias-metric")  # ICAT: the headline's metric
widgets.chart(plots.bias_bars(part, metric, colors), key="bias-chart")
