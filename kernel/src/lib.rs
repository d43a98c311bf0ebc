//! A Jupyter kernel that runs Python in a worker process.
//!
//! - [`connection_file`], [`signing`], [`replay`], [`wire`]: the Jupyter wire protocol;
//! - [`server`]: binding the channels and serving them;
//! - [`executor`]: running requests against the worker;
//! - [`worker`]: the Python worker process and its private protocol;
//! - [`zygote`]: workers forked from a pre-imported one (`stepkernel watch`);
//! - [`debug_bridge`]: JupyterLab's debugger (`debug_request`) routed to the `debugger` crate;
//! - [`steer`]: steering a run from outside the Jupyter channels;
//! - [`event_ring`]: shared memory carrying the worker's progress events;
//! - [`assets`]: the embedded Python package.

pub mod assets;
pub mod connection_file;
pub mod debug_bridge;
pub mod event_ring;
pub mod executor;
pub mod limits;
pub mod magics;
pub mod output_tty;
pub mod private_files;
pub mod replay;
pub mod server;
pub mod session;
pub mod signing;
pub mod steer;
pub mod stream_splitter;
pub mod validate;
pub mod wire;
pub mod worker;
pub mod zygote;
