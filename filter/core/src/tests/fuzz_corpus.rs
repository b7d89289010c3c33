//! Stable replay of the fuzz corpus: every file in `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through its target's harness ([`crate::fuzzing`]), the
//! same code libFuzzer runs on nightly. `fuzz/crashes-pending/` is not replayed: those
//! inputs still crash (see its README). Also: the generated seeds replay, and the fixed
//! parts of the harnesses (configs, rule sets, generators) are what they claim to be.
//!
//! `cargo test -p kafka-mesh-core write_seeds -- --ignored` (re)writes the generated seeds
//! as `fuzz/corpus/<target>/seed-*`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};

use crate::fuzzing::*;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Run `f` on `input`; the panic message if it panics.
fn run(f: fn(&[u8]), input: &[u8]) -> Option<String> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(input)));
    r.err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into())
    })
}

#[test]
fn corpus_and_regressions_replay() {
    let mut ran = 0;
    let mut failed = Vec::new();
    for kind in ["corpus", "regressions"] {
        for target in TARGETS {
            let f = harness(target).unwrap();
            let dir = fuzz_dir().join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.is_file()
                        && !p.file_name().is_some_and(|n| {
                            n.to_string_lossy().starts_with('.') || n == "README.md"
                        })
                })
                .collect();
            files.sort();
            for p in files {
                let input = std::fs::read(&p).unwrap();
                if let Some(msg) = run(f, &input) {
                    failed.push(format!("{}: {msg}", p.display()));
                }
                ran += 1;
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {ran} inputs fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(ran > 0, "no corpus found under {}", fuzz_dir().display());
}

#[test]
fn generated_seeds_replay() {
    let seeds = seeds();
    for t in TARGETS {
        assert!(
            seeds.iter().filter(|s| s.target == *t).count() >= 10,
            "few seeds for {t}"
        );
    }
    let mut failed = Vec::new();
    for s in &seeds {
        if let Some(msg) = run(harness(s.target).unwrap(), &s.bytes) {
            failed.push(format!("{}/seed-{}: {msg}", s.target, s.name));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run with --ignored to regenerate the seeds"]
fn write_seeds() {
    for s in seeds() {
        let dir = fuzz_dir().join("corpus").join(s.target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{}", s.name)), &s.bytes).unwrap();
    }
}

#[test]
fn fixed_parts_are_valid() {
    for (i, sc) in SESSION_CONFIGS.iter().enumerate() {
        let c = crate::config::Config::from_json(sc.json.as_bytes())
            .unwrap_or_else(|e| panic!("session config {}: {e}", sc.name));
        assert_eq!(
            sc.observer_only,
            c.compiled_policy.is_none() && c.compiled_rewrite.is_none() && !c.clamp_api_versions,
            "{}",
            sc.name
        );
        assert!(crate::fuzzing::session_config_compiles(i), "{}", sc.name);
    }
    for (r, _) in REWRITERS {
        let spec: crate::rewrite::RewriteSpec = serde_json::from_str(r).unwrap();
        crate::rewrite::Rewriter::compile(&spec, ".rewrite").unwrap();
    }
    // Every case and version: a message to compare, and a request for the session pass.
    for case in DIFF_CASES {
        let (lo, hi) = case.versions();
        assert!(lo <= hi, "{case:?}");
        for v in lo..=hi {
            assert!(
                crate::fuzzing::generates(*case, v),
                "{case:?} v{v}: the generator builds nothing kafka-protocol encodes"
            );
            if !case.request() {
                assert!(
                    crate::fuzzing::session_request(case.api(), v).is_some(),
                    "{case:?} v{v}: no request to match the response to"
                );
            }
        }
    }
}

#[test]
fn session_input_round_trips_a_capture() {
    let a = vec![7u8; 70_000];
    let segs = [
        Segment {
            dir: crate::session::Direction::Request,
            eos: false,
            bytes: &a,
        },
        Segment {
            dir: crate::session::Direction::Response,
            eos: true,
            bytes: b"xyz",
        },
    ];
    let input = session_input(1, 0, &segs);
    // 70 000 bytes become two segments of 65 535 and 4 465
    assert_eq!(input.len(), 2 + 3 + 65_535 + 3 + 4_465 + 3 + 3);
    assert_eq!(&input[..5], &[1, 0, 0, 0xff, 0xff]);
    assert_eq!(&input[input.len() - 6..], &[3, 0, 3, b'x', b'y', b'z']);
}

#[test]
fn pending_predicate_passes_real_encodings() {
    // The harnesses step around inputs `kp_tags_unsafe` flags; it must not flag what
    // kafka-protocol itself writes, or they would step around valid messages too.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut patterns: Vec<Vec<u8>> = seed_patterns().iter().map(|p| p.to_vec()).collect();
    patterns.push(Vec::new());
    for _ in 0..100 {
        patterns.push(
            (0..200)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect(),
        );
    }
    for case in [
        DiffCase::FetchResponse,
        DiffCase::ProduceResponse,
        DiffCase::FetchRequest,
    ] {
        let (lo, hi) = case.versions();
        for v in lo..=hi {
            for p in &patterns {
                let Some(body) = encode_case(case, v, p) else {
                    continue;
                };
                // and the differential target's encode mode agrees on it
                differential(&differential_input(case, v, 3, true, p));
                assert!(
                    !crate::fuzzing::pending::kp_tags_unsafe(case.api(), case.request(), v, &body),
                    "{case:?} v{v} flagged"
                );
            }
        }
    }
}
