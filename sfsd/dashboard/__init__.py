"""The Streamlit dashboard's helpers: cached run-store reads (`data`), background jobs (`jobs`),
Plotly figures (`plots`), the HTML report (`report`) and small shared widgets (`widgets`).

The pages (`app.py`, `pages/`) stay thin: they pick what to show and call these modules. Everything
the dashboard knows about runs comes from `sfsd.runs`; all work it starts runs in background
processes through `sfsd.runs.launch` (or the `sfsd` command line).
"""
