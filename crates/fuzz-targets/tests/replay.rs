//! Replays every checked-in input through its fuzz target, without fuzzing: the seeds of
//! `fuzz/corpus/<target>/` and the inputs that once found a bug, `fuzz/regressions/<target>/`.
//! An old crash never comes back unnoticed, and no nightly toolchain is needed.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir/<target>/`, sorted; none when the directory does not exist.
fn inputs(dir: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs each input through `target`, naming the file of any input that panics.
fn replay(target: &str, run: fn(&[u8]), files: &[PathBuf]) {
    for file in files {
        let data = std::fs::read(file).expect("readable input");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{target}: {} fails again", file.display());
        }
    }
}

#[test]
fn every_target_has_seeds_and_every_seed_replays() {
    for (target, run) in fuzz_targets::TARGETS {
        let seeds = inputs("corpus", target);
        assert!(!seeds.is_empty(), "fuzz/corpus/{target}/ holds no seed");
        replay(target, *run, &seeds);
    }
}

#[test]
fn every_regression_replays() {
    for (target, run) in fuzz_targets::TARGETS {
        replay(target, *run, &inputs("regressions", target));
    }
}

#[test]
fn every_corpus_directory_names_a_target() {
    let known: Vec<&str> = fuzz_targets::TARGETS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir)) else {
            continue;
        };
        for entry in entries {
            let name = entry.expect("readable directory entry").file_name();
            let name = name.to_string_lossy();
            // seg_properties needs the default `seg-proxy` feature.
            if cfg!(not(feature = "seg-proxy")) && name == "seg_properties" {
                continue;
            }
            assert!(known.contains(&&*name), "fuzz/{dir}/{name}/ has no target");
        }
    }
}
