//! Versions the instrumenter's output: a hash of its own sources, so caches
//! of step data (the worker's `.steps` files) are never trusted across a
//! change in how files are split.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src readable")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let mut files = vec![manifest.join("Cargo.toml")];
    collect(&manifest.join("src"), &mut files);
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    // FNV-1a over names and contents.
    let mut hash: u64 = 0xcbf29ce484222325;
    for path in &files {
        let rel = path.strip_prefix(&manifest).unwrap().to_string_lossy();
        let bytes = std::fs::read(path).expect("source readable");
        for byte in rel
            .as_bytes()
            .iter()
            .chain([0u8].iter())
            .chain(bytes.iter())
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    println!("cargo:rustc-env=INSTRUMENTER_SOURCE_HASH={hash:016x}");
}
