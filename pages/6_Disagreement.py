"""Prediction disagreement (the paper's Table 3): how often a compressed model's answer differs from the
base model's, per task, and the flipped examples themselves."""

import streamlit as st

from sfsd.dashboard import data, headlines, jobs, plots, widgets
from sfsd.data import OFFLINE_TASKS
from sfsd.errors import SfsdError
from sfsd.evaluate import disagreement
from sfsd.runs.readonly import readonly

top = widgets.page_setup("Prediction disagreement", "Two models on the same documents (eval split): accuracy of each, "
                         "the difference, and the share of documents whose predicted answer changed — a compressed "
                         "model can keep its accuracy while flipping many answers.")

models = data.model_choices()
compressed = [m for m in models if data.compressed_method(m)]

if not readonly():  # read-only mode: nothing is saved
    with st.expander("Save a finished search run's model (for comparing it here)", expanded=not compressed):
        done = data.list_runs(kind="search")
        done = done[done["state"] == "done"]
        if done.empty:
            st.info("No finished search run yet: start one on the Runs page (or the quick demo on the start page).")
        else:
            run_id = widgets.pick_run(done, key="dis-materialize-run", label="Finished search run")
            if st.button("Save its compressed model", key="dis-materialize", icon=":material/save:"):
                with st.spinner("Building the compressed model (loads the model and the cached decompositions)..."):
                    try:
                        st.toast(f"saved {jobs.materialize_run(run_id)}")
                    except SfsdError as exc:
                        st.error(str(exc))
                    else:
                        st.rerun()  # the new folder joins the model lists

if len(models) < 2:
    st.info("Only one model is known. Save a run's model above, run Table 1's protocol on the **Weight vs feature** "
            "page (its models are listed here), or compress one with `sfsd compress ... --out cache/models/NAME`.")
    st.stop()

# A and B one above the other: a Table 1 model's name does not fit half the page at 1000 px
model_a = st.selectbox("Model A (reference)", models, index=models.index(data.demo_model()), key="dis-a",
                       format_func=data.model_display)
default_b = next((m for m in compressed if m != model_a), next(m for m in models if m != model_a))
model_b = st.selectbox("Model B (compared)", models, index=models.index(default_b), key="dis-b",
                       format_func=data.model_display)
widgets.broken_model_warnings([model_a, model_b])
c1, c2, c3 = st.columns([3, 1, 1])
tasks = c1.multiselect("Tasks", list(OFFLINE_TASKS), default=[OFFLINE_TASKS[1] if len(OFFLINE_TASKS) > 1
                                                              else OFFLINE_TASKS[0]], key="dis-tasks")
limit = c2.number_input("Documents per task", 1, 5000, 50, key="dis-limit",
                        help="the first N documents of each task's eval split (about 1 s each on a CPU)")
metric = c3.radio("Prediction", ["acc", "acc_norm"], horizontal=True, key="dis-metric",
                  help="acc: highest log-likelihood; acc_norm: highest log-likelihood per character")
key = (model_a, model_b, tuple(tasks), int(limit))
results = st.session_state.setdefault("dis-results", {})
if not readonly() and st.button("Compare", key="dis-run", type="primary", disabled=not tasks or model_a == model_b,
             icon=":material/compare_arrows:"):
    with st.spinner(f"Evaluating both models on {len(tasks)} task(s), {int(limit)} documents each..."):
        try:
            widgets.save_table1_models([model_a, model_b])
            results[key] = (data.task_records(model_a, tuple(tasks), int(limit)),
                            data.task_records(model_b, tuple(tasks), int(limit)))
        except (SfsdError, OSError, ValueError) as exc:
            st.error(f"Evaluation failed: {exc}")
if model_a == model_b:
    st.caption("Pick two different models.")
if key not in results:
    st.info("Read-only mode: comparisons are not computed here (they take minutes and write the evaluation cache); "
            "use a full dashboard or `sfsd disagree`." if readonly() else
            "Press **Compare** to evaluate both models (results are cached: a second time is instant).")
    st.stop()

records_a, records_b = results[key]
label_a, label_b = data.model_display(model_a), data.model_display(model_b)
summary = disagreement(records_a, records_b, metric)
widgets.headline(top, headlines.disagreement_headline(summary, label_b=label_b, label_a=label_a))
st.subheader("Per task")
for task, n in zip(summary["task"], summary["n_shared"], strict=True):
    if n < data.SMALL_N:
        st.warning(f"{task}: only {n} documents (fewer than {data.SMALL_N}): the 95% intervals are wide; "
                   "compare more documents.")
widgets.table(data.disagreement_text(summary), "disagreement", key="dis-summary")
st.caption(f"A = {label_a}, B = {label_b}. Intervals: Wilson 95% for the accuracies and the disagreement; the "
           "delta's is the paired (same documents) 95% interval, from the documents one model got right and the "
           "other wrong.")
widgets.chart(plots.disagreement_bars(summary, label_a, label_b), key="dis-chart")

st.subheader("Flipped examples")
c1, c2 = st.columns([1, 2])
task = c1.selectbox("Task", tasks, key="dis-flip-task")
flipped = data.flip_table(records_a, records_b, task, metric)
directions = ["all", *sorted(flipped["direction"].unique())]
direction = c2.radio("Direction", directions, horizontal=True, key="dis-direction")
if direction != "all":
    flipped = flipped[flipped["direction"] == direction]
st.caption(f"{len(flipped)} flipped documents. Choices are shown as `index: text`; log-likelihoods per choice, "
           "A then B.")
widgets.table(flipped, f"flips-{task}", key="dis-flips", column_config={
    "doc_id": st.column_config.TextColumn("doc", width="small"),
    "question": st.column_config.TextColumn("question", width="medium"),
    "gold": st.column_config.TextColumn("gold", width="medium"),
    "pred_a": st.column_config.TextColumn("prediction A", width="medium"),
    "pred_b": st.column_config.TextColumn("prediction B", width="medium"),
    "loglik_a": st.column_config.TextColumn("log-lik A", width="small"),
    "loglik_b": st.column_config.TextColumn("log-lik B", width="small"),
})
