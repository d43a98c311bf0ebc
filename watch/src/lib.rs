//! `stepkernel watch`: watch the project, rerun the tests a change affects
//! (from per-test dependencies recorded by the Python worker), failures first.

pub mod app;
pub mod blocks;
pub mod control;
pub mod db;
pub mod fswatch;
pub mod hot_reload;
pub mod imports;
pub mod keys;
pub mod output;
pub mod record;
pub mod screen;
pub mod select;
pub mod zygote;
