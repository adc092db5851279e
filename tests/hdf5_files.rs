//! The HDF5 reader on files h5py writes with other settings than Keras's defaults
//! (`tests/data/hdf5`, recorded by `scripts/record_hdf5_cases.py`): `libver="latest"`
//! (superblock v3, v2 object headers), chunked gzip and shuffle datasets, float16, bfloat16,
//! big-endian float32 and float64 datasets, variable-length and fixed string attributes.

use lstm_wgpu::hdf5::H5File;
use serde_json::Value;
use std::path::PathBuf;

#[test]
fn every_dataset_and_string_attribute_reads_as_h5py_reads_it() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/hdf5");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let files = expected.as_object().unwrap();
    assert_eq!(files.len(), 2);
    for (name, exp) in files {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let f = H5File::new(&bytes).unwrap();
        for (path, want) in exp["datasets"].as_object().unwrap() {
            let d = f
                .dataset(path)
                .unwrap_or_else(|e| panic!("{name} {path}: {e}"));
            let shape: Vec<usize> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(d.shape, shape, "{name} {path}");
            for (got, w) in d.values.iter().zip(want["values"].as_array().unwrap()) {
                // every value is exact in f32 (f64 ones rounded to f32, as the layers take them)
                assert_eq!(*got, w.as_f64().unwrap() as f32, "{name} {path}");
            }
        }
        for (attr, want) in exp["attributes"].as_object().unwrap() {
            let got = f.string_attribute("", attr).unwrap();
            let want: Vec<String> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            assert_eq!(got, want, "{name} attribute {attr}");
        }
        assert!(f.exists("a/b/c/f16").unwrap() && !f.exists("a/b/x").unwrap());
        assert_eq!(f.list("a/b/c").unwrap(), ["f16", "f32", "f64"]);
        // A missing dataset and a string attribute that is not there are errors.
        assert!(f.dataset("a/b/c/nope").is_err());
        assert!(f.string_attribute("", "nope").is_err());
    }
}
