//! How the `levee` binary is linked.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        // Relative relocations packed (DT_RELR): the dynamic loader reads
        // a few KiB of them at start instead of about 500 KiB of RELA
        // entries, which would stay in the process's resident memory.
        // Needs glibc 2.36 or later where levee runs; an older one refuses
        // the binary at start (GLIBC_ABI_DT_RELR not found).
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
