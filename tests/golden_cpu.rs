//! Every public golden case on the CPU path: ≤ 1e-5 (float32) / ≤ 1e-12 (float64) against Keras.

use lstm_wgpu::golden::{case_files, check_case_cpu, cpu_tolerance, Case};

mod common;

#[test]
fn every_golden_case_matches_keras_on_cpu() {
    let dir = common::lstm_cases_dir();
    let files =
        case_files(&dir).unwrap_or_else(|e| panic!("golden cases at {}: {e}", dir.display()));
    assert!(
        files.len() >= 41,
        "expected at least 41 cases in {}, found {}",
        dir.display(),
        files.len()
    );
    let mut failures = Vec::new();
    let mut worst = (0.0f64, String::new());
    for f in &files {
        let case = Case::load(f).unwrap();
        match check_case_cpu(&case) {
            Ok(err) if err <= cpu_tolerance(&case.dtype) => {
                if case.dtype == "float32" && err > worst.0 {
                    worst = (err, case.name.clone());
                }
            }
            Ok(err) => failures.push(format!("{}: max abs error {err:e}", case.name)),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    println!("worst float32 error: {:e} ({})", worst.0, worst.1);
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
}
