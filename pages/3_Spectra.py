"""Eigenvalue spectra: one layer's feature-space eigenvalues against the squared singular values of W,
cumulative energy with the rank of each beta, and small multiples over all blocks of one role."""

import pandas as pd
import streamlit as st

from sfsd.dashboard import data, headlines, plots, widgets

top = widgets.page_setup("Eigenvalue spectra", "Feature space keeps the top eigenvectors of the output covariance "
                         "C_y = W Cov(x) Wᵀ; weight space the top singular vectors of W. A faster-decaying spectrum "
                         "means more energy in fewer components: a lower rank for the same error.")

if plots.NO_SPECTRUM:
    st.caption(f"{', '.join(plots.NO_SPECTRUM)}: no per-layer spectrum. LLM-Pruner removes whole attention heads "
               "and MLP channels by their Taylor importance; SliceGPT removes directions of the residual stream "
               "shared by all layers, not of one layer's outputs. Their models are Table 1 rows (Weight vs feature "
               "page).")
runs = widgets.search_runs_with("spectra")
if runs.empty:
    widgets.no_runs("search runs with stored spectra", key="spectra-empty")
    st.stop()

# a run with both spectra first (feature space against weight space); a weight-space search stores only its own
run_id, view = widgets.pick_loaded_run(runs, key="spectra-run",
                                       starts_among=data.runs_with_both_spectra(list(runs["run_id"])) or None)
if view is None:
    st.stop()
layers = view.layers
if layers.empty:
    st.info("This run has no layer list yet.")
    st.stop()

st.subheader("One layer")
names = list(layers.sort_values(["block", "order"], ascending=[False, False])["layer"])
if st.session_state.get("spectra-layer") not in names:
    current = st.session_state.get(widgets.SELECTED_LAYER)
    st.session_state["spectra-layer"] = current if current in names else names[0]
c1, c2 = st.columns([3, 1])
layer = c1.selectbox("Layer", names, key="spectra-layer")
st.session_state[widgets.SELECTED_LAYER] = layer
row = layers[layers["layer"] == layer].iloc[0]
rank = None if pd.isna(row["rank"]) else int(row["rank"])
d_in, d_out = int(row["d_in"]), int(row["d_out"])
state = "intact (no beta passed)" if row["intact"] else (f"rank {rank}, beta {row['beta']:g}" if rank else "undecided")
c2.markdown(f"**Search decision**  \n{state}")
spectrum = data.spectra(run_id, layer)
widgets.headline(top, headlines.spectra_headline(layer, spectrum, rank, d_in, d_out, bool(row["intact"])))
widgets.chart(plots.spectrum_figure(spectrum, d_in, d_out, rank, view.method,
                                    title=f"{layer} · d_in {d_in} · d_out {d_out} · {view.label}"),
              key="spectra-layer-chart")
if not spectrum.empty:
    st.caption("Eigenvalues of Cov(Wx) and squared singular values of W are in different units: each spectrum is "
               "drawn as the share of its own total energy (left, log scale) and cumulatively (right).")
    energy = plots.energy_table(spectrum, d_in, d_out)
    st.caption("Rank of each beta (Eq. 3: r = ⌊β d_in d_out / (d_in + d_out)⌋) and the share of each spectrum's "
               "energy its top-r components hold.")
    widgets.table(data.energy_text(energy), f"{run_id}-{layer}-energy", key="spectra-energy")

st.subheader("All blocks, one role")
roles = plots.ordered_roles(layers["role"].dropna())
c1, c2 = st.columns([1, 3])
role = c1.selectbox("Role", roles, index=roles.index(row["role"]) if row["role"] in roles else 0, key="spectra-role")
cumulative = c2.radio("Show", ["share of energy (log)", "cumulative energy (%)"], horizontal=True,
                      key="spectra-grid-mode") != "share of energy (log)"
grid = data.spectra(run_id, role=role)
ranks = {int(r.block): (None if pd.isna(r.rank) else int(r.rank))
         for r in layers[layers["role"] == role].itertuples()}
widgets.chart(plots.spectra_grid(grid, ranks, view.method, cumulative,
                                 title=f"role {role}: every searched block (solid line: chosen rank)"),
              key="spectra-grid-chart")
with st.expander("Spectra as a table (long format)"):
    widgets.table(data.filled(grid), f"{run_id}-{role}-spectra", key="spectra-grid-table")
