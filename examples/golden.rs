//! Golden-case runner: replays cases recorded from real Keras on the CPU and/or GPU path.
//!
//! ```text
//! cargo run --release --example golden -- [--backend cpu|gpu|all] PATH...
//! ```
//! Each PATH is a case file or a folder of them. Prints one line per case and backend
//! (name, backend, max abs error, PASS/FAIL), then `N passed, M failed`; exits non-zero if
//! anything failed or no case was found.

use lstm_wgpu::golden::{
    case_files, check_case_cpu, check_case_gpu, cpu_tolerance, Case, GPU_TOLERANCE,
};
use lstm_wgpu::gpu::{GpuContext, GpuOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Cpu,
    Gpu,
}

fn usage() -> ExitCode {
    eprintln!("usage: golden [--backend cpu|gpu|all] PATH...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut backends = vec![Backend::Cpu];
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--backend" => {
                backends = match args.next().as_deref() {
                    Some("cpu") => vec![Backend::Cpu],
                    Some("gpu") => vec![Backend::Gpu],
                    Some("all") => vec![Backend::Cpu, Backend::Gpu],
                    _ => return usage(),
                }
            }
            "-h" | "--help" => return usage(),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.is_empty() {
        return usage();
    }
    let mut files = Vec::new();
    for p in &paths {
        match case_files(p) {
            Ok(f) => files.extend(f),
            Err(e) => {
                eprintln!("{e}");
            }
        }
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    let gpu = if backends.contains(&Backend::Gpu) {
        // (a software adapter too: the runner checks correctness)
        let ctx = GpuContext::with_options(&GpuOptions::from_env().allow_software(true));
        match &ctx {
            Ok(c) => println!("gpu: {}", c.describe()),
            Err(e) => println!("gpu: {e}"),
        }
        Some(ctx)
    } else {
        None
    };
    for file in &files {
        let case = match Case::load(file) {
            Ok(c) => c,
            Err(e) => {
                println!("{:<48} {:<4} error: {e}  FAIL", file.display(), "-");
                failed += 1;
                continue;
            }
        };
        for &backend in &backends {
            let (label, result, tol) = match backend {
                Backend::Cpu => ("cpu", check_case_cpu(&case), cpu_tolerance(&case.dtype)),
                Backend::Gpu => {
                    let result = match gpu.as_ref().expect("set when gpu is requested") {
                        Ok(ctx) => check_case_gpu(&case, ctx),
                        Err(e) => Err(lstm_wgpu::LstmError::NoGpuAdapter {
                            tried: e.to_string(),
                        }),
                    };
                    ("gpu", result, GPU_TOLERANCE)
                }
            };
            match result {
                Ok(err) if err <= tol => {
                    passed += 1;
                    println!("{:<48} {label:<4} max_abs_err={err:.3e}  PASS", case.name);
                }
                Ok(err) => {
                    failed += 1;
                    println!(
                        "{:<48} {label:<4} max_abs_err={err:.3e}  FAIL (tolerance {tol:e})",
                        case.name
                    );
                }
                Err(e) => {
                    failed += 1;
                    println!("{:<48} {label:<4} error: {e}  FAIL", case.name);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
