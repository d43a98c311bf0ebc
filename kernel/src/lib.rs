//! A Jupyter kernel that runs Python in a worker process.
