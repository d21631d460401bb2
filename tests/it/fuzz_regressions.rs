//! Replays every input that ever crashed a fuzz target (`fuzz/regressions/TARGET/`) and the
//! seed inputs (`fuzz/seeds/TARGET/`) through the same entry points `fuzz/` drives
//! (`fastgate::fuzzing`), so a fixed crash stays fixed without the fuzzer.

use std::path::Path;

#[test]
fn every_kept_fuzz_input_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    for (name, target) in fastgate::fuzzing::TARGETS {
        for dir in ["regressions", "seeds"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else { continue };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} panics again", e.path().display());
                ran += 1;
            }
        }
    }
    assert!(ran >= 10, "only {ran} inputs found under {}", root.display());
    let kept = std::fs::read_dir(root.join("regressions").join("config")).map(|d| d.count()).unwrap_or(0);
    assert!(kept >= 1, "the config crash found by fuzzing is kept");
}
