"""The leaderboard: an ipywidgets panel (widget.py) and its static renderings (render.py)."""
