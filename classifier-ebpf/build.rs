//! Rebuild the object when bpf-linker changes: cargo does not know that rustc calls it.
use std::env;

fn main() {
    let linker = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.is_file())
    });
    match linker {
        Some(path) => println!("cargo:rerun-if-changed={}", path.display()),
        None => println!("cargo:warning=bpf-linker not on PATH: run `cargo xtask setup`"),
    }
}
