"""The Python side of stepkernel: runs code and tests inside the user's interpreter."""
