"""The operator's live dashboard of ``swarmguard serve``: ``GET /`` on a node (README, "dashboard").

:mod:`.routes` holds the page, its static files (package data, Plotly's bundled
``plotly.min.js`` from the installed plotly) and the ``/v1/dashboard/*`` queries;
:mod:`.history` the per-window history a node keeps for it, :mod:`.cluster_history` the
part of it the Regions panel reads (confidence, staleness, peers' reachability).
"""
