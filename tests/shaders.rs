//! Every WGSL kernel parses and validates with naga (no GPU needed). The parameter structs,
//! workgroup sizes and constants are checked against their Rust definitions by the unit tests
//! of `src/gpu/params.rs`.

use lstm_wgpu::gpu::kernel_sources;

#[test]
fn every_kernel_parses_and_validates() {
    let sources = kernel_sources();
    assert_eq!(sources.len(), 19);
    for (name, src) in sources {
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        );
        validator
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        assert!(
            module.entry_points.iter().any(|e| e.name == "main"),
            "{name} has no `main` entry point"
        );
    }
}

#[test]
fn step_kernel_selects_activations_with_overrides() {
    let sources = kernel_sources();
    let src = &sources
        .iter()
        .find(|(name, _)| *name == "step")
        .expect("a step kernel")
        .1;
    let module = naga::front::wgsl::parse_str(src).unwrap();
    let names: Vec<_> = module
        .overrides
        .iter()
        .filter_map(|(_, o)| o.name.clone())
        .collect();
    for want in [
        "ACTIVATION",
        "RECURRENT_ACTIVATION",
        "ZERO_OUTPUT_FOR_MASK",
        "HAS_MASK",
        "WRITE_SEQUENCE",
    ] {
        assert!(names.iter().any(|n| n == want), "missing override {want}");
    }
    // The activation table covers every activation id.
    for a in lstm_wgpu::Activation::ALL {
        assert!(
            src.contains(&format!("case {}u:", a.id())),
            "no case for {a}"
        );
    }
}
