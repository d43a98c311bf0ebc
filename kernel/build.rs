//! Embeds the Python worker package (`worker/stepkernel_worker` at the
//! workspace root: the engine is a part of its own) into the binary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("python dir readable")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "__pycache__" {
                collect(&path, out);
            }
        } else if name.ends_with(".py") {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("..").join("worker");
    let package = root.join("stepkernel_worker");
    println!("cargo:rerun-if-changed={}", package.display());
    let mut files = Vec::new();
    collect(&package, &mut files);
    let mut code = String::from("/// The worker's files: (path relative to the python dir, contents).\npub static FILES: &[(&str, &str)] = &[\n");
    // FNV-1a over names and contents versions the unpacked copy.
    let mut hash: u64 = 0xcbf29ce484222325;
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let contents = std::fs::read(path).unwrap();
        for byte in rel.as_bytes().iter().chain(contents.iter()) {
            hash ^= *byte as u64;
            hash = hash.wrapping_mul(0x100000001b3);
        }
        writeln!(
            code,
            "    ({rel:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    writeln!(code, "/// A hash of all files, naming the unpacked directory.\npub const HASH: &str = \"{hash:016x}\";").unwrap();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("worker_files.rs");
    std::fs::write(out, code).unwrap();
}
