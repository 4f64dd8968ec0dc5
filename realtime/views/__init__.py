"""Views: what a person watching the engine sees, in a terminal or an OpenCV window."""
