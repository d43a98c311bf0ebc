//! `stepkernel watch`: watch the project, rerun the tests a change affects
//! (from per-test dependencies recorded by the Python worker), failures first.

pub mod blocks;
pub mod db;
pub mod imports;
pub mod select;
